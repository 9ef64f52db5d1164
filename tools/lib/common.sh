# Shared by tools/run and tools/test: the dependency step and hugepage reservation.
# Source it; it defines functions only.

HUGEALLOC_APT_PACKAGES=(libnuma-dev libhugetlbfs-dev pkg-config)

# Installs the C libraries HugeAlloc links against, when missing.
ensure_deps() {
    local missing=()
    for pkg in "${HUGEALLOC_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "==> installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "HugeAlloc needs these Debian packages: ${missing[*]}" >&2
        echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
}

# reserve_2m_pages N: when root and fewer than N 2 MiB pages are free, raises
# nr_hugepages so that N are free, and prints what it did. Prints the previous
# nr_hugepages on stdout so the caller can give the pages back.
reserve_2m_pages() {
    local want=$1 sys=/sys/kernel/mm/hugepages/hugepages-2048kB
    [ -d "$sys" ] || { echo "no 2 MiB hugepage support in this kernel" >&2; return 0; }
    local total free
    total=$(cat "$sys/nr_hugepages"); free=$(cat "$sys/free_hugepages")
    echo "$total"
    if [ "$free" -ge "$want" ]; then return 0; fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "only $free free 2 MiB hugepages (tests want $want); hugepage tests will be skipped." >&2
        echo "Reserve more with: echo $((total + want - free)) | sudo tee $sys/nr_hugepages" >&2
        return 0
    fi
    # Compact first: pages reserved from defragmented memory come in physically
    # contiguous runs, which the contiguous and heap tests need (a fragmented
    # machine once gave a pool whose adjacent pairs all started at odd frames).
    echo 1 > /proc/sys/vm/compact_memory 2>/dev/null || true
    echo $((total + want - free)) > "$sys/nr_hugepages"
    echo "reserved 2 MiB hugepages for the tests: nr_hugepages $total -> $(cat "$sys/nr_hugepages"), free $(cat "$sys/free_hugepages")" >&2
}

# reserve_pages_for_tests: as root, makes 512 2 MiB pages free for the tests
# and, at exit, gives back what it reserved unless someone changed the pool
# since. Every writer of nr_hugepages (tools/test, tools/test-sanitizers and
# the tests that change the pool: withHugepageReservationLock in
# Tests/HugeAllocTestSupport) takes the same lock, so runs in other checkouts
# never restore over each other's change. Sets an EXIT trap.
reserve_pages_for_tests() {
    sys=/sys/kernel/mm/hugepages/hugepages-2048kB
    lock=/tmp/hugealloc-hugepage-reservation.lock
    root=false
    if [ "$(id -u)" -eq 0 ]; then root=true; exec 9>>"$lock"; flock 9; fi
    previous=$(reserve_2m_pages 512 | tail -n 1)
    reserved=$(cat "$sys/nr_hugepages" 2>/dev/null || true)
    if $root; then flock -u 9; fi
    # Gives back what this run reserved, unless someone changed the pool since.
    restore_pages() {
        if $root && [ -n "${previous:-}" ] && [ "$reserved" != "$previous" ] && [ -w "$sys/nr_hugepages" ]; then
            flock 9
            if [ "$(cat "$sys/nr_hugepages")" = "$reserved" ]; then echo "$previous" > "$sys/nr_hugepages" || true; fi
            flock -u 9
        fi
    }
    trap restore_pages EXIT
}

# hugetlbfs_files: every file at the top of every hugetlbfs mount, sorted;
# compared before and after a run that must leave none (EAL --in-memory).
hugetlbfs_files() {
    awk '$3 == "hugetlbfs" { print $2 }' /proc/mounts | while read -r mount; do
        find "$mount" -maxdepth 1 -type f 2>/dev/null || true
    done | sort
}
