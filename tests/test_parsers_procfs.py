"""app.parsers.procfs on real captured files (tests/fixtures/proc, sources in tests/fixtures/SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.parsers.procfs import (
    MapEntry,
    ProcStat,
    find_mapping,
    parse_cmdline,
    parse_io,
    parse_maps,
    parse_meminfo,
    parse_ns_link,
    parse_pressure,
    parse_smaps,
    parse_smaps_rollup,
    parse_stat,
    parse_stat_bytes,
    parse_status,
    parse_vmstat,
)

PROC = Path(__file__).parent / "fixtures" / "proc"


def read(name: str) -> str:
    return (PROC / name).read_text()


# --- /proc/PID/stat -------------------------------------------------------------------------------

STAT_CASES = [
    # (file, quirk, pid, comm, state, ppid, minflt, majflt, utime, stime, threads, starttime, rss)
    ("stat-comm-with-parens-and-spaces.txt", "comm with spaces and parens; a 2nd line in the file",
     1020, "(a b ) ( c d) ", "R", 28378, 286, 0, 0, 0, 1, 10839175, 155),
    ("stat-comm-with-parens-test-cmd-sh.txt", "comm 'test(cmd).sh': parens inside comm",
     68927, "test(cmd).sh", "S", 68044, 165, 0, 0, 0, 1, 114413973, 868),
    ("stat-kernel-thread-ata_sff-negative-fields.txt", "kernel thread: -1 and -2^63 fields",
     33, "ata_sff", "S", 2, 0, 0, 0, 0, 1, 5, 0),
    ("stat-khungtaskd-pid-17-no-final-newline.txt", "no trailing newline",
     17, "khungtaskd", "S", 2, 0, 0, 14, 0, 1, 24, 0),
    ("stat-pthread_load.txt", "multi-threaded process, majflt 1", 27079, "pthread_load", "S", 1, 113, 1, 58125, 15,
     5, 4289574, 138),
    ("stat-systemd-pid1.txt", "pid 1, ppid 0, majflt 94", 1, "systemd", "S", 0, 9061, 94, 36, 98, 1, 29, 2507),
    ("stat-vim.txt", "plain process: majflt (field 12) 26 differs from cminflt/cmajflt", 26231, "vim", "R", 5392,
     32533, 26, 1677, 44, 1, 82375, 1981),
]


@pytest.mark.parametrize("case", STAT_CASES, ids=[c[0] for c in STAT_CASES])
def test_parse_stat_fixture(case: tuple) -> None:
    name, _quirk, *expected = case
    want = ProcStat(*expected)
    assert parse_stat(read(name)) == want
    # The hot path over bytes agrees with the text parser.
    assert parse_stat_bytes((PROC / name).read_bytes()) == want


@pytest.mark.parametrize(
    ("text", "quirk"),
    [
        ("", "empty file"),
        ("garbage", "no (comm)"),
        ("12 (x) S 1 2 3", "too few fields"),
        ("12 (x) S 1 2 3 4 5 6 seven 8 9 10 11 12 13 14 15 16 17 18 19 20", "non-numeric minflt"),
        ("abc (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22", "non-numeric pid"),
        (")x( S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22", "')' before '('"),
    ],
)
def test_parse_stat_garbage_raises_clear_error(text: str, quirk: str) -> None:
    with pytest.raises(ValueError, match="stat"):
        parse_stat(text)
    with pytest.raises(ValueError, match="stat"):
        parse_stat_bytes(text.encode())


def test_parse_stat_bytes_non_utf8_comm() -> None:
    """Quirk: comm is raw bytes; a non-UTF-8 name is replaced, not an error."""
    line = (PROC / "stat-vim.txt").read_bytes().replace(b"(vim)", b"(v\xffm)")
    assert parse_stat_bytes(line).comm == "v\ufffdm"
    assert parse_stat_bytes(line).majflt == 26


# --- /proc/PID/maps -------------------------------------------------------------------------------


def test_parse_maps_cat_rwxs_vsyscall() -> None:
    """Quirk: shared writable exec mapping (rwxs); [vsyscall] above 2^63."""
    maps = parse_maps(read("maps-cat-rwxs-vsyscall.txt"))
    assert len(maps) == 9
    assert maps[0] == MapEntry(0x55680AE1E000, 0x55680AE20000, "r--p", 0, "fd:01", 47316994, "/bin/cat", False)
    shared = maps[1]
    assert (shared.perms, shared.offset, shared.is_shared, shared.is_exec) == ("rwxs", 0xA000, True, True)
    heap, stack = maps[2], maps[5]
    assert heap.path == "[heap]" and heap.is_anonymous
    assert stack.path == "[stack]" and stack.is_anonymous
    assert maps[-1].path == "[vsyscall]" and maps[-1].start == 0xFFFFFFFFFF600000
    assert not maps[-1].is_anonymous and not maps[0].is_anonymous
    assert find_mapping(maps, 0x55680BED6000 + 5).path == "[heap]"


def test_parse_maps_tcsh_32bit_no_padding() -> None:
    """Quirk: 8-hex-digit addresses, single spaces, and an anonymous line with no path at all."""
    maps = parse_maps(read("maps-tcsh-32bit-anon-no-padding.txt"))
    assert [m.path for m in maps] == ["/bin/tcsh", "/bin/tcsh", "", "/lib/ld-2.3.2.so"]
    anon = maps[2]
    assert (anon.start, anon.end, anon.perms, anon.inode, anon.dev) == (0x0808C000, 0x08146000, "rwxp", 0, "00:00")
    assert anon.is_anonymous
    assert maps[1].offset == 0x41000


def test_parse_maps_jvm_deleted_and_memfd() -> None:
    """Quirk: ' (deleted)' suffix on unlinked .so files and on memfd mappings; 1759 lines unsorted-safe."""
    maps = parse_maps(read("maps-jvm-container-deleted-memfd.txt"))
    assert len(maps) == 1759
    assert [m.start for m in maps] == sorted(m.start for m in maps)
    netty = find_mapping(maps, 0x7FEA6EC00000 + 0x100)
    assert netty is not None
    assert netty.path == "/tmp/libnetty_transport_native_epoll_x86_6413640138921322660888.so"
    assert netty.deleted and netty.is_exec and netty.inode == 1558259 and netty.dev == "00:10d"
    memfd = find_mapping(maps, 0x7FECBC94B000)
    assert memfd is not None
    assert (memfd.path, memfd.deleted, memfd.is_shared, memfd.offset) == ("/memfd:allocation_ring_buffer", True,
                                                                          True, 0x1000)
    assert not memfd.is_anonymous  # shmem, not anonymous: the resolver calls it shmem
    assert sum(m.deleted for m in maps) == 18
    heap = find_mapping(maps, 0x5612BC2E1000)
    assert heap is not None and heap.path == "[heap]"


def test_find_mapping_edges() -> None:
    maps = parse_maps(read("maps-tcsh-32bit-anon-no-padding.txt"))
    assert find_mapping(maps, 0x08048000).path == "/bin/tcsh"  # start is inside
    assert find_mapping(maps, 0x08089000).offset == 0x41000  # end is exclusive: the next mapping
    assert find_mapping(maps, 0x08146000) is None  # gap between mappings
    assert find_mapping(maps, 0x1000) is None  # below the first
    assert find_mapping(maps, 0xFFFFFFFF) is None  # above the last
    assert find_mapping([], 0x1000) is None


def test_parse_maps_path_with_spaces_and_anon_names() -> None:
    """Synthetic lines (kernel format): a path with spaces, a deleted one, and named anonymous memory."""
    text = (
        "7f0000000000-7f0000001000 r--s 00000000 08:01 42                         /data/my index file.bin\n"
        "7f0000001000-7f0000002000 r--p 00000000 08:01 43                         /data/old (v1).bin (deleted)\n"
        "7f0000002000-7f0000003000 rw-p 00000000 00:00 0                          [anon:jemalloc]\n"
    )
    a, b, c = parse_maps(text)
    assert a.path == "/data/my index file.bin" and not a.deleted and a.is_shared
    assert b.path == "/data/old (v1).bin" and b.deleted
    assert c.is_anonymous


def test_parse_maps_garbage() -> None:
    with pytest.raises(ValueError, match="maps"):
        parse_maps("not a maps line\n")
    with pytest.raises(ValueError, match="maps"):
        parse_maps("zzzz-0000 r--p 00000000 00:00 0\n")


# --- smaps / smaps_rollup -------------------------------------------------------------------------


def test_parse_smaps_alertmanager() -> None:
    """Quirk: VmFlags lines end with a space; SwapPss present."""
    entries = parse_smaps(read("smaps-alertmanager-vmflags-trailing-space.txt"))
    assert len(entries) == 12
    text = entries[0]
    assert text.mapping.path == "/bin/alertmanager" and text.mapping.is_exec
    assert (text.size_bytes, text.rss_bytes, text.private_clean_bytes) == (8900 * 1024, 2952 * 1024, 2952 * 1024)
    assert text.vm_flags == ("rd", "ex", "mr", "mw", "me", "dw", "sd")
    # The sums agree with the same process's smaps_rollup (Rss 29948 kB, Swap 1940 kB).
    assert sum(e.rss_bytes for e in entries) == 29948 * 1024
    assert sum(e.swap_bytes for e in entries) == 1940 * 1024
    # Quirk: a private writable FILE mapping (the binary's data segment) can hold swapped pages:
    # its copy-on-write pages are anonymous memory.
    data = entries[2]
    assert (data.mapping.path, data.mapping.perms, data.swap_bytes) == ("/bin/alertmanager", "rw-p", 12 * 1024)


def test_parse_smaps_thpeligible_captured_here() -> None:
    """Quirk: kernel 6.x adds unit-less THPeligible lines between the kB counters; ignored."""
    entries = parse_smaps(read("smaps-cat-thpeligible-captured-here.txt"))
    assert len(entries) == 38
    first = entries[0]
    assert first.mapping.path == "/usr/bin/cat"
    assert (first.rss_bytes, first.pss_bytes, first.shared_clean_bytes) == (8192, 4096, 8192)
    assert sum(e.rss_bytes for e in entries) == 1675264
    assert entries[-1].mapping.path == "[vsyscall]"


def test_parse_smaps_protection_key_synthetic() -> None:
    """Synthetic (kernel format, x86 with PKU): a ProtectionKey line and an unknown key are ignored."""
    text = (
        "00400000-00401000 r-xp 00000000 fd:01 1   /bin/x\n"
        "Rss:                   4 kB\n"
        "Swap:                  8 kB\n"
        "FutureCounter:        99 kB\n"
        "THPeligible:    0\n"
        "ProtectionKey:         0\n"
        "VmFlags: rd ex mr mw me \n"
    )
    (e,) = parse_smaps(text)
    assert (e.rss_bytes, e.swap_bytes, e.vm_flags) == (4096, 8192, ("rd", "ex", "mr", "mw", "me"))


def test_parse_smaps_rollup() -> None:
    """Quirk: a '[rollup]' pseudo-mapping header line first."""
    rollup = parse_smaps_rollup(read("smaps_rollup-alertmanager.txt"))
    assert rollup["Rss"] == 29948 * 1024
    assert rollup["Swap"] == 1940 * 1024
    assert rollup["Anonymous"] == 20756 * 1024
    here = parse_smaps_rollup(read("smaps_rollup-cat-captured-here.txt"))
    assert here["Pss_Anon"] == 112 * 1024 and here["Rss"] == 1753088


# --- vmstat / meminfo / PSI / io -------------------------------------------------------------------


def test_parse_vmstat() -> None:
    old = parse_vmstat(read("vmstat-node-exporter.txt"))
    assert old["pgmajfault"] == 507162
    assert old["nr_free_pages"] == 977769 and old["nr_alloc_batch"] == 4158
    # Quirk: older kernels have one workingset_refault; 5.9+ split it into _anon and _file.
    assert "workingset_refault" in old and "workingset_refault_file" not in old
    new = parse_vmstat(read("vmstat-captured-here.txt"))
    assert (new["pgmajfault"], new["pswpin"], new["pswpout"]) == (409098, 64376, 229372)
    assert (new["workingset_refault_anon"], new["workingset_refault_file"]) == (64376, 252495)


def test_parse_meminfo_bytes() -> None:
    mem = parse_meminfo(read("meminfo-captured-here.txt"))
    assert mem["MemTotal"] == 24684092 * 1024
    assert mem["MemAvailable"] == 24133608 * 1024
    assert mem["FileHugePages"] == 8192 * 1024
    # Quirk: HugePages_* are counts without a unit: not multiplied.
    assert mem["HugePages_Total"] == 0 and mem["Hugepagesize"] == 2048 * 1024


@pytest.mark.parametrize(
    ("name", "quirk", "some", "full"),
    [
        ("pressure-memory-node-exporter.txt", "all zero", (0.0, 0.0, 0.0, 0), (0.0, 0.0, 0.0, 0)),
        ("pressure-io-captured-here.txt", "non-zero some and full", (11.44, 9.72, 4.64, 29365731),
         (8.41, 7.65, 4.0, 25280332)),
        ("pressure-cpu-captured-here.txt", "cpu has a (zero) full line since 5.13", (14.01, 11.62, 5.81, 43074155),
         (0.0, 0.0, 0.0, 0)),
    ],
)
def test_parse_pressure(name: str, quirk: str, some: tuple, full: tuple) -> None:
    p = parse_pressure(read(name))
    assert (p.some_avg10, p.some_avg60, p.some_avg300, p.some_total_us) == some
    assert (p.full_avg10, p.full_avg60, p.full_avg300, p.full_total_us) == full


def test_parse_pressure_some_only_and_garbage() -> None:
    """Quirk: /proc/pressure/cpu before 5.13 has no 'full' line."""
    p = parse_pressure("some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\n")
    assert (p.some_avg10, p.some_total_us, p.full_avg10, p.full_total_us) == (1.5, 12345, None, None)
    with pytest.raises(ValueError, match="PSI"):
        parse_pressure("")
    with pytest.raises(ValueError, match="PSI"):
        parse_pressure("some avg10=x avg60=0 avg300=0 total=0")


def test_parse_io() -> None:
    io = parse_io(read("io-sh-after-read-captured-here.txt"))
    assert io == {"rchar": 1059532, "wchar": 1048576, "syscr": 27, "syscw": 8, "read_bytes": 2551808,
                  "write_bytes": 24576, "cancelled_write_bytes": 0}


# --- cmdline (its redaction: tests/test_redaction.py) ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "quirk", "argv"),
    [
        (b"/usr/bin/python3\0-m\0http.server\0", "trailing NUL", ["/usr/bin/python3", "-m", "http.server"]),
        (b"", "kernel thread / zombie: empty", []),
        (b"nginx: worker process", "setproctitle: no NUL at all", ["nginx: worker process"]),
        (b"postgres: checkpointer\0\0\0\0", "setproctitle: NUL padding", ["postgres: checkpointer"]),
        (b"app\0\0--x\0", "an empty argument in the middle is kept", ["app", "", "--x"]),
        (b"caf\xe9\0", "not UTF-8: replaced", ["caf\ufffd"]),
    ],
)
def test_parse_cmdline(data: bytes, quirk: str, argv: list[str]) -> None:
    assert parse_cmdline(data) == argv


# --- /proc/PID/status and ns links ------------------------------------------------------------------

STATUS_CASES = [
    # (fixture, quirk, name, state, kernel_thread, rss, swap)
    ("status-cat-captured-here.txt", "a user process: Vm*/Rss* lines in kB", "cat", "R", False,
     1688 * 1024, 0),
    ("status-kthreadd-captured-here.txt", "a kernel thread: no mm, so no Vm* lines (None, not 0)", "kthreadd",
     "S", True, None, None),
    ("status-zombie-sleep-captured-here.txt", "a zombie: its mm is gone too", "sleep", "Z", False, None, None),
]


@pytest.mark.parametrize("fixture,quirk,name,state,kthread,rss,swap", STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
def test_parse_status(fixture, quirk, name, state, kthread, rss, swap) -> None:
    st = parse_status(read(fixture))
    assert (st.name, st.state, st.kernel_thread) == (name, state, kthread), quirk
    assert (st.vm_rss_bytes, st.vm_swap_bytes) == (rss, swap), quirk
    assert st.uid == 0 and st.threads == 1


def test_parse_status_rss_split_and_ids() -> None:
    st = parse_status(read("status-cat-captured-here.txt"))
    assert st.rss_anon_bytes + st.rss_file_bytes + st.rss_shmem_bytes == st.vm_rss_bytes
    assert st.tgid is not None and st.ppid is not None and st.tgid != st.ppid


@pytest.mark.parametrize("text", ["", "Umask:\t0022\n", "garbage"])
def test_parse_status_rejects_non_status(text: str) -> None:
    with pytest.raises(ValueError):
        parse_status(text)


def test_parse_ns_link() -> None:
    assert parse_ns_link("mnt:[4026531832]") == ("mnt", 4026531832)
    for bad in ("mnt:4026531832", "mnt:[x]", ":[1]", "/proc/1/ns/mnt"):
        with pytest.raises(ValueError):
            parse_ns_link(bad)
