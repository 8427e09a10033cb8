"""A small, typed ctypes layer over the system libbpf (libbpf.so.1).

Split by concern like a loader should be: `BpfObject` (open, configure, load,
close), `Program`/`Link` (attach and release), `Map` (fd-level operations,
pinned-map reuse); ring buffers are read in ringbuf.py. Every failure raises
`BpfError` naming the object involved and the reason.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

BTF_KIND_ENUM = 6
BTF_KIND_FUNC = 12
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
LIBBPF_WARN = 0
# libbpf.h's code for a file it cannot parse as ELF (its codes start at 4000).
LIBBPF_ERRNO__FORMAT = 4001
BPF_FS_MAGIC = 0xCAFE4A11
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FEXIT = 25


class BpfError(Exception):
    """A libbpf or bpf() failure, with what was being done and why it failed."""


class _BtfType(Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class _BtfVarSecinfo(Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class BpfMapInfo(Structure):
    """Leading part of the kernel's struct bpf_map_info (the kernel fills
    only as much as we pass, so the tail fields need not be declared)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * 16),
    ]

    @property
    def type_name(self) -> str:
        """libbpf's name for the map type ("hash", "array", ...)."""
        name = _lib.libbpf_bpf_map_type_str(self.type)
        return name.decode() if name else f"type {self.type}"


class _ProgLoadOpts(Structure):
    """struct bpf_prog_load_opts up to attach_btf_obj_fd; sz tells libbpf
    where it ends, the rest takes its defaults."""

    _fields_ = [("sz", c_size_t), ("attempts", c_int), ("expected_attach_type", c_uint32),
                ("prog_btf_fd", c_uint32), ("prog_flags", c_uint32), ("prog_ifindex", c_uint32),
                ("kern_version", c_uint32), ("attach_btf_id", c_uint32),
                ("attach_prog_fd", c_uint32), ("attach_btf_obj_fd", c_uint32)]


class _ObjectOpenOpts(Structure):
    """The leading part of libbpf's struct bpf_object_open_opts, up to the
    last field used here; libbpf reads only `sz` bytes of it."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", c_bool),
        ("pin_root_path", c_char_p),
        ("_removed_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
    ]


_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


def _load_library() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as exc:
        raise ImportError(f"cannot load libbpf.so.1 (install the libbpf1 package): {exc}") from None


_lib = _load_library()
_libc = ctypes.CDLL(None, use_errno=True)


def _declare(name: str, restype: type | None, *argtypes: type) -> None:
    func = getattr(_lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)


for _name, _res, _args in [
    ("libbpf_set_print", c_void_p, [_PRINT_FN]),
    ("bpf_object__open_file", c_void_p, [c_char_p, POINTER(_ObjectOpenOpts)]),
    ("bpf_object__load", c_int, [c_void_p]),
    ("bpf_object__close", None, [c_void_p]),
    ("bpf_object__btf", c_void_p, [c_void_p]),
    ("bpf_object__find_map_by_name", c_void_p, [c_void_p, c_char_p]),
    ("bpf_object__find_program_by_name", c_void_p, [c_void_p, c_char_p]),
    ("bpf_object__next_program", c_void_p, [c_void_p, c_void_p]),
    ("bpf_program__name", c_char_p, [c_void_p]),
    ("bpf_program__set_autoload", c_int, [c_void_p, c_bool]),
    ("bpf_program__attach", c_void_p, [c_void_p]),
    ("bpf_program__fd", c_int, [c_void_p]),
    ("bpf_link__destroy", c_int, [c_void_p]),
    ("bpf_map__fd", c_int, [c_void_p]),
    ("bpf_map__value_size", c_uint32, [c_void_p]),
    ("bpf_map__set_max_entries", c_int, [c_void_p, c_uint32]),
    ("bpf_map__initial_value", c_void_p, [c_void_p, POINTER(c_size_t)]),
    ("bpf_map__reuse_fd", c_int, [c_void_p, c_int]),
    ("bpf_obj_get", c_int, [c_char_p]),
    ("bpf_obj_get_info_by_fd", c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    ("libbpf_bpf_map_type_str", c_char_p, [c_uint32]),
    ("bpf_map_update_elem", c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    ("bpf_map_lookup_elem", c_int, [c_int, c_void_p, c_void_p]),
    ("bpf_map_delete_elem", c_int, [c_int, c_void_p]),
    ("bpf_map_get_next_key", c_int, [c_int, c_void_p, c_void_p]),
    ("btf__find_by_name_kind", c_int, [c_void_p, c_char_p, c_uint32]),
    ("btf__parse", c_void_p, [c_char_p, c_void_p]),
    ("btf__free", None, [c_void_p]),
    ("bpf_map_create", c_int, [c_uint32, c_char_p, c_uint32, c_uint32, c_uint32, c_void_p]),
    ("btf__type_by_id", POINTER(_BtfType), [c_void_p, c_uint32]),
    ("btf__name_by_offset", c_char_p, [c_void_p, c_uint32]),
    ("libbpf_num_possible_cpus", c_int, []),
    ("btf__load_vmlinux_btf", c_void_p, []),
    ("bpf_prog_load", c_int, [c_uint32, c_char_p, c_char_p, c_void_p, c_size_t,
                              POINTER(_ProgLoadOpts)]),
]:
    _declare(_name, _res, *_args)

_libc.vsnprintf.restype = c_int
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.mmap.restype = c_void_p
_libc.mmap.argtypes = [c_void_p, c_size_t, c_int, c_int, c_int, ctypes.c_long]
_libc.munmap.restype = c_int
_libc.munmap.argtypes = [c_void_p, c_size_t]
MAP_FAILED = 2**64 - 1
_libc.statfs.restype = c_int
_libc.statfs.argtypes = [c_char_p, c_void_p]


def filesystem_magic(path: str) -> int:
    # f_type is the first field of struct statfs; 128 bytes covers the struct.
    buf = ctypes.create_string_buffer(128)
    if _libc.statfs(os.fsencode(path), buf) < 0:
        raise BpfError(f"{path}: {os.strerror(ctypes.get_errno())}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class _LibbpfLog:
    """Keeps libbpf's recent warnings so an error can say why, instead of
    libbpf printing a verifier dump over the user's terminal."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._callback = _PRINT_FN(self._print)
        _lib.libbpf_set_print(self._callback)

    def _print(self, level: int, fmt: bytes, args: int) -> int:
        if level == LIBBPF_WARN:
            buf = ctypes.create_string_buffer(512)
            # va_list arrives as one pointer-sized value, passed on as it came:
            # on x86-64 it is an array type and decays to a pointer; on arm64 it
            # is a 32-byte struct (five fields), which AAPCS64 passes by
            # reference (a pointer to a copy) because it is a composite larger
            # than 16 bytes. vsnprintf takes its va_list the same way and uses
            # it up, so it is passed on once. test_missing_tracepoint_is_named
            # reads a formatted warning, on arm64 too (the kernel matrix).
            _libc.vsnprintf(buf, len(buf), fmt, args)
            self.lines.append(buf.value.decode(errors="replace").rstrip())
            del self.lines[:-20]
        return 0

    def mark(self) -> None:
        """Starts a new operation: only what libbpf says from here explains it."""
        self.lines.clear()

    def reason(self) -> str:
        """The root cause libbpf gave, usually its first complaint."""
        for line in self.lines:
            missing = re.search(r"failed to find kernel BTF type ID of '(\w+)'", line)
            if missing:
                return f"the kernel has no tracepoint {missing.group(1)}"
            if line:
                return line.splitlines()[0]
        return ""


_log = _LibbpfLog()


def _failure(what: str, err: int) -> BpfError:
    err = abs(err)
    reason = os.strerror(err) if err else "unknown error"
    detail = _log.reason()
    return BpfError(f"{what}: {reason} ({detail})" if detail else f"{what}: {reason}")


def _check(result: int, what: str) -> int:
    if result < 0:
        raise _failure(what, result)
    return result


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise _failure(what, ctypes.get_errno())
    return ptr


class Map:
    """A map of a loaded object, or a pinned map opened by path."""

    def __init__(self, name: str, fd: int, owned: bool = False) -> None:
        self.name = name
        self.fd = fd
        self._owned = owned

    @classmethod
    def from_pin(cls, path: str) -> Map:
        if not os.path.exists(path):
            raise BpfError(f"{path}: No such file or directory")
        if filesystem_magic(path) != BPF_FS_MAGIC:
            raise BpfError(f"{path} is not on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)")
        if os.path.isdir(path):
            raise BpfError(f"{path} is a directory, not a pinned map")
        fd = _lib.bpf_obj_get(os.fsencode(path))
        if fd < 0:
            raise _failure(f"cannot open pinned BPF object {path}", ctypes.get_errno())
        pinned = cls(path, fd, owned=True)
        # The kernel has no "what is this fd" call; fdinfo names the kind.
        with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
            fields = {line.split(":", 1)[0] for line in fdinfo}
        if "map_type" not in fields:
            pinned.close()
            kind = ("program" if "prog_type" in fields else
                    "link" if "link_type" in fields else "object")
            raise BpfError(f"{path} is a pinned BPF {kind}, not a map")
        return pinned

    def info(self) -> BpfMapInfo:
        info = BpfMapInfo()
        size = c_uint32(ctypes.sizeof(info))
        _check(_lib.bpf_obj_get_info_by_fd(self.fd, ctypes.byref(info), ctypes.byref(size)),
               f"cannot read info of map {self.name}")
        return info

    def update(self, key: ctypes._CData, value: ctypes._CData) -> None:
        _check(_lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0),
               f"cannot update map {self.name}")

    def lookup(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        """Reads key into value; False if it is not there. A per-CPU map's
        value is one slot per possible CPU (possible_cpus())."""
        if _lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)) < 0:
            if ctypes.get_errno() == errno.ENOENT:
                return False
            raise _failure(f"cannot read map {self.name}", ctypes.get_errno())
        return True

    def take(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        """Reads and removes key; False if it was not there, or if a BPF
        program removed it between the two steps (then the program owns it).
        Two steps, not BPF_MAP_LOOKUP_AND_DELETE_ELEM: hash maps support that
        only from Linux 5.14. The value read is the one removed as long as
        programs only insert and remove entries, never rewrite them."""
        if _lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)) < 0:
            if ctypes.get_errno() == errno.ENOENT:
                return False
            raise _failure(f"cannot read map {self.name}", ctypes.get_errno())
        if _lib.bpf_map_delete_elem(self.fd, ctypes.byref(key)) < 0:
            if ctypes.get_errno() == errno.ENOENT:
                return False
            raise _failure(f"cannot delete from map {self.name}", ctypes.get_errno())
        return True

    def keys(self, key_type: type[ctypes._CData]) -> list[ctypes._CData]:
        """All keys, read in one sweep (entries added meanwhile may be missed)."""
        found: list[ctypes._CData] = []
        previous = None
        while True:
            key = key_type()
            prev_ref = ctypes.byref(previous) if previous is not None else None
            if _lib.bpf_map_get_next_key(self.fd, prev_ref, ctypes.byref(key)) < 0:
                if ctypes.get_errno() == errno.ENOENT:
                    return found
                raise _failure(f"cannot iterate map {self.name}", ctypes.get_errno())
            found.append(key)
            previous = key

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def possible_cpus() -> int:
    """CPUs the kernel may ever bring online: the slots of a per-CPU value."""
    return _check(_lib.libbpf_num_possible_cpus(), "cannot count the possible CPUs")


class Link:
    """An attached program; detached on close."""

    def __init__(self, program: str, ptr: int) -> None:
        self.program = program
        self._ptr: int | None = ptr

    def close(self) -> None:
        if self._ptr:
            _lib.bpf_link__destroy(self._ptr)
            self._ptr = None


# struct bpf_prog_info (include/uapi/linux/bpf.h) up to recursion_misses, a
# __u64 at byte 208 that Linux 5.12 added. The kernel fills the fields it
# has and returns how many bytes that was.
PROG_INFO_SIZE = 216
RECURSION_MISSES_OFFSET = 208


class Program:
    def __init__(self, name: str, ptr: int) -> None:
        self.name = name
        self._ptr = ptr

    def recursion_misses(self) -> int | None:
        """Runs of this loaded program the kernel skipped because it was
        already running on that CPU (a tracepoint hit again from an interrupt
        while the program ran); None where the kernel does not count them."""
        info = (ctypes.c_uint8 * PROG_INFO_SIZE)()
        size = c_uint32(PROG_INFO_SIZE)
        _check(_lib.bpf_obj_get_info_by_fd(_lib.bpf_program__fd(self._ptr), info,
                                           ctypes.byref(size)),
               f"cannot read info of program {self.name}")
        if size.value < RECURSION_MISSES_OFFSET + 8:
            return None
        return ctypes.c_uint64.from_buffer(info, RECURSION_MISSES_OFFSET).value

    def set_autoload(self, autoload: bool) -> None:
        _check(_lib.bpf_program__set_autoload(self._ptr, autoload),
               f"cannot change autoload of program {self.name}")

    def attach(self) -> Link:
        _log.mark()
        ptr = _lib.bpf_program__attach(self._ptr)
        return Link(self.name, _check_ptr(ptr, f"cannot attach program {self.name}"))


class MappedMemory:
    """A shared mapping of a map's fd, read and written through ctypes: an
    aligned 8-byte field is then loaded and stored whole, as the kernel
    reading it concurrently needs (the struct module may move such a field
    a byte at a time)."""

    def __init__(self, fd: int, size: int, what: str, offset: int = 0,
                 writable: bool = False) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        address = _libc.mmap(None, size, prot, mmap.MAP_SHARED, fd, offset)
        if address in (None, MAP_FAILED):
            raise _failure(f"cannot map {what}", ctypes.get_errno())
        self.address: int = address
        self.size = size

    def close(self) -> None:
        if self.size:
            _libc.munmap(self.address, self.size)
            self.size = 0


class GlobalVariables:
    """Typed access to the variables of one data section (.rodata, .bss),
    located through the object's BTF the way a generated skeleton would."""

    def __init__(self, section: str, base: int, layout: dict[str, tuple[int, int]],
                 mapping: MappedMemory | None = None) -> None:
        self.section = section
        self._base = base
        self._layout = layout
        self._mapping = mapping

    def close(self) -> None:
        """Unmaps live variables; the mapping would keep the map alive."""
        if self._mapping is not None:
            self._mapping.close()

    def _address(self, name: str, ctype: type[ctypes._CData]) -> int:
        try:
            offset, size = self._layout[name]
        except KeyError:
            raise BpfError(f"no variable {name} in section {self.section}") from None
        if size != ctypes.sizeof(ctype):
            raise BpfError(f"variable {name} in {self.section} is {size} bytes, "
                           f"not {ctypes.sizeof(ctype)}")
        return self._base + offset

    def set(self, name: str, ctype: type[ctypes._CData], value: object) -> None:
        ctype.from_address(self._address(name, ctype)).value = value

    def get(self, name: str, ctype: type[ctypes._CData]) -> object:
        return ctype.from_address(self._address(name, ctype)).value

    def view(self, name: str, ctype: type[ctypes._CData]) -> ctypes._CData:
        """The variable in place, for arrays (which have no .value)."""
        return ctype.from_address(self._address(name, ctype))


def _parse_btf(path: str) -> int:
    """libbpf's parsed BTF of a file (free it with btf__free); BpfError
    unless the file holds BTF libbpf can read."""
    btf = _lib.btf__parse(os.fsencode(path), None)
    if not btf:
        err = ctypes.get_errno() or errno.EINVAL
        # What libbpf answers for a file that holds no BTF at all: its own
        # code has no strerror text, and ENOENT would read as a missing file.
        reason = {LIBBPF_ERRNO__FORMAT: "neither raw BTF nor an ELF file",
                  errno.ENOENT: "an ELF file without a .BTF section"}.get(err, os.strerror(err))
        raise BpfError(f"{path}: not a readable BTF file ({reason})")
    return btf


def check_btf_file(path: str) -> None:
    """Raises BpfError unless path holds BTF that libbpf can read (raw BTF,
    as BTFHub ships it, or an ELF file with a .BTF section)."""
    _log.mark()
    _lib.btf__free(_parse_btf(path))


class _BtfEnum(Structure):
    _fields_ = [("name_off", c_uint32), ("val", ctypes.c_int32)]


def enum_values(btf_path: str, name: str) -> dict[int, str]:
    """The values of enum `name` in a BTF file, by number; empty when the
    file has no such enum. Raises BpfError when the file cannot be read."""
    btf = _parse_btf(btf_path)
    try:
        type_id = _lib.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_ENUM)
        if type_id < 0:
            return {}
        enum = _lib.btf__type_by_id(btf, type_id)
        entries = ctypes.cast(ctypes.addressof(enum.contents) + ctypes.sizeof(_BtfType),
                              POINTER(_BtfEnum))
        return {entries[i].val: _lib.btf__name_by_offset(btf, entries[i].name_off).decode()
                for i in range(enum.contents.info & 0xFFFF)}
    finally:
        _lib.btf__free(btf)


def map_creation_error(map_type: int, max_entries: int) -> int:
    """0 if the kernel creates a map of this type (keyless, valueless, as
    ring buffers are) for this process, else the errno bpf() gave: unlike
    libbpf_probe_bpf_map_type, which answers "unsupported" for every
    failure, this tells EPERM (a seccomp filter, an LSM) from EINVAL (a
    kernel without the type)."""
    fd = _lib.bpf_map_create(map_type, None, 0, 0, max_entries, None)
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


# r0 = 0; exit: a program that does nothing, for probing where one may attach.
_RETURN_ZERO = (ctypes.c_uint64 * 2)(0xB7, 0x95)


def _load_refusal(prog_type: int, insns: ctypes.Array, opts: _ProgLoadOpts) -> int:
    """0 if the kernel loads this program (closed at once), else its errno."""
    fd = _lib.bpf_prog_load(prog_type, b"probe", b"GPL", insns, len(insns), ctypes.byref(opts))
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


def fexit_refusal(functions: tuple[str, ...]) -> str | None:
    """None if the kernel loads a BPF fexit program on each of these
    functions of its own (vmlinux; BPF trampolines attach through ftrace),
    else why not. Loading, as libbpf would, not attaching: an attach would
    cost its detach's RCU wait on every start."""
    btf = _lib.btf__load_vmlinux_btf()
    if not btf:
        return f"the kernel's BTF cannot be read: {os.strerror(ctypes.get_errno())}"
    try:
        for function in functions:
            type_id = _lib.btf__find_by_name_kind(btf, function.encode(), BTF_KIND_FUNC)
            if type_id < 0:
                return f"the kernel's BTF has no function {function}"
            err = _load_refusal(BPF_PROG_TYPE_TRACING, _RETURN_ZERO, _ProgLoadOpts(
                sz=ctypes.sizeof(_ProgLoadOpts), expected_attach_type=BPF_TRACE_FEXIT,
                attach_btf_id=type_id))
            if err:
                return f"an fexit program on {function} was refused: {os.strerror(err)}"
        return None
    finally:
        _lib.btf__free(btf)


# *(u64 *)(r10 - 8) = 0; r1 = 1; r0 = 0;
# r0 = cmpxchg((u64 *)(r10 - 8), r0, r1); exit: BPF_ATOMIC's BPF_CMPXCHG on
# the stack (Linux 5.12; before, the same opcode with this immediate is a
# BPF_XADD with reserved fields set, refused with EINVAL).
_CMPXCHG = (ctypes.c_uint64 * 5)(0x7A | 0x0A << 8 | 0xFFF8 << 16, 0xB7 | 1 << 8 | 1 << 32,
                                   0xB7, 0xDB | 0x1A << 8 | 0xFFF8 << 16 | 0xF1 << 32, 0x95)


def cmpxchg_refusal() -> str | None:
    """None if the kernel's verifier accepts BPF's compare-and-exchange,
    else why not."""
    err = _load_refusal(BPF_PROG_TYPE_SOCKET_FILTER, _CMPXCHG,
                        _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts)))
    if err:
        return f"a program using compare-and-exchange was refused: {os.strerror(err)}"
    return None


class BpfObject:
    """An opened (then loaded) BPF object file. With btf_path, CO-RE
    relocations use that BTF file instead of the kernel's own."""

    def __init__(self, path: str, btf_path: str | None = None) -> None:
        self.path = path
        opts = _ObjectOpenOpts(sz=ctypes.sizeof(_ObjectOpenOpts),
                               btf_custom_path=os.fsencode(btf_path) if btf_path else None)
        _log.mark()
        ptr = _lib.bpf_object__open_file(os.fsencode(path), ctypes.byref(opts))
        self._ptr: int | None = _check_ptr(ptr, f"cannot open BPF object {path}")

    def _find_map(self, name: str) -> int:
        ptr = _lib.bpf_object__find_map_by_name(self._ptr, name.encode())
        if not ptr:
            raise BpfError(f"{self.path} has no map {name}")
        return ptr

    def map(self, name: str) -> Map:
        fd = _lib.bpf_map__fd(self._find_map(name))
        if fd < 0:
            raise BpfError(f"map {name} of {self.path} is not loaded")
        return Map(name, fd)

    def program(self, name: str) -> Program:
        ptr = _lib.bpf_object__find_program_by_name(self._ptr, name.encode())
        if not ptr:
            raise BpfError(f"{self.path} has no program {name}")
        return Program(name, ptr)

    def program_names(self) -> list[str]:
        """Every program of the object, in its order."""
        names = []
        ptr = _lib.bpf_object__next_program(self._ptr, None)
        while ptr:
            names.append(_lib.bpf_program__name(ptr).decode())
            ptr = _lib.bpf_object__next_program(self._ptr, ptr)
        return names

    def set_max_entries(self, name: str, entries: int) -> None:
        _check(_lib.bpf_map__set_max_entries(self._find_map(name), entries),
               f"cannot resize map {name}")

    def reuse_map(self, name: str, pinned: Map) -> None:
        """Makes the programs use a pinned map in place of their own `name`."""
        _check(_lib.bpf_map__reuse_fd(self._find_map(name), pinned.fd),
               f"cannot use {pinned.name} as map {name}")

    def initial_variables(self, section: str) -> GlobalVariables:
        """Variables of a section as they will be loaded: how .rodata
        configuration is written before load."""
        size = c_size_t()
        base = _lib.bpf_map__initial_value(self._find_map(section), ctypes.byref(size))
        if not base:
            raise BpfError(f"section {section} of {self.path} is not accessible")
        return GlobalVariables(section, base, self._section_layout(section))

    def live_variables(self, section: str) -> GlobalVariables:
        """Variables of a loaded section, mapped from the kernel's copy, so
        reads see what the programs write (.bss counters) and the programs
        what is written (.bss flags) without a syscall."""
        map_ptr = self._find_map(section)
        mapping = MappedMemory(_lib.bpf_map__fd(map_ptr), _lib.bpf_map__value_size(map_ptr),
                               f"section {section} of {self.path}", writable=True)
        return GlobalVariables(section, mapping.address, self._section_layout(section), mapping)

    def _section_layout(self, section: str) -> dict[str, tuple[int, int]]:
        btf = _lib.bpf_object__btf(self._ptr)
        if not btf:
            raise BpfError(f"{self.path} carries no BTF")
        type_id = _lib.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
        if type_id < 0:
            raise BpfError(f"{self.path} has no section {section} in its BTF")
        datasec = _lib.btf__type_by_id(btf, type_id)
        entries = ctypes.cast(ctypes.addressof(datasec.contents) + ctypes.sizeof(_BtfType),
                              POINTER(_BtfVarSecinfo))
        layout: dict[str, tuple[int, int]] = {}
        for i in range(datasec.contents.info & 0xFFFF):
            var = _lib.btf__type_by_id(btf, entries[i].type).contents
            if (var.info >> 24) & 0x1F == BTF_KIND_VAR:
                name = _lib.btf__name_by_offset(btf, var.name_off).decode()
                layout[name] = (entries[i].offset, entries[i].size)
        return layout

    def load(self) -> None:
        _log.mark()
        _check(_lib.bpf_object__load(self._ptr), f"cannot load BPF object {self.path}")

    def close(self) -> None:
        if self._ptr:
            _lib.bpf_object__close(self._ptr)
            self._ptr = None
