# Guest-building pieces shared by tools/numa-vm-test and tools/dma-vm-test:
# the Debian packages a guest needs, the kernel and busybox, a check program
# built with SwiftPM, and a busybox initramfs that runs it. Source it after
# tools/lib/common.sh; it defines functions only.

VM_PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static cpio)

# vm_ensure_packages NAME: installs QEMU, a kernel, busybox-static and cpio
# when missing (root), or says how (not root). NAME is the calling script.
vm_ensure_packages() {
    local name=$1 missing=() pkg
    for pkg in "${VM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "$name needs: ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
    echo "==> installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# vm_find_kernel OVERRIDE: sets vm_kernel to OVERRIDE or the newest /boot/vmlinuz-*.
vm_find_kernel() {
    vm_kernel=${1:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}
    [ -r "$vm_kernel" ] || { echo "no readable kernel image (looked in /boot; set $2)" >&2; return 1; }
}

# vm_find_busybox: sets vm_busybox to a statically linked busybox.
vm_find_busybox() {
    vm_busybox=$(command -v busybox || echo /bin/busybox)
    if file -L "$vm_busybox" 2>/dev/null | grep -q "dynamically linked"; then
        echo "$vm_busybox is dynamically linked; install busybox-static" >&2
        return 1
    fi
}

# vm_build_check PRODUCT CONFIG: builds a SwiftPM product; sets vm_binary.
vm_build_check() {
    echo "==> building $1 ($2)"
    swift build -c "$2" --product "$1" >&2
    vm_binary="$(swift build -c "$2" --show-bin-path)/$1"
}

# vm_make_root ROOT BINARY NAME APPLET...: a guest root file system with
# busybox (and the applets named), BINARY as /NAME and every shared library
# it loads (ldd lists the Swift runtime from the toolchain's RUNPATH, the
# C libraries and the dynamic loader), each at the same path as on the host.
# Sets vm_library_count. The caller writes ROOT/init.
vm_make_root() {
    local root=$1 binary=$2 name=$3 applet lib libraries
    shift 3
    mkdir -p "$root"/{bin,dev,proc,sys,tmp}
    cp "$vm_busybox" "$root/bin/busybox"
    for applet in sh mount cat echo poweroff sleep "$@"; do ln -sf busybox "$root/bin/$applet"; done
    cp "$binary" "$root/$name"
    libraries=$(ldd "$binary" | grep -o '/[^ ]*' | sort -u)
    for lib in $libraries; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    vm_library_count=$(echo "$libraries" | wc -l)
}

# vm_add_binary ROOT BINARY NAME: one more program in a root made by
# vm_make_root, as /NAME, with the shared libraries it loads.
vm_add_binary() {
    local root=$1 binary=$2 name=$3 lib
    cp "$binary" "$root/$name"
    for lib in $(ldd "$binary" | grep -o '/[^ ]*' | sort -u); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# vm_pack_initramfs ROOT OUTPUT: a gzipped newc cpio of ROOT.
vm_pack_initramfs() {
    (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2"
}
