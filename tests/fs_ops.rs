//! Kernel tests of the file, path and pipe operations: one-buffer read and
//! write, sync_file_range, fadvise, each fallocate mode, openat and
//! openat2 (plain and into the registered file table), close, statx,
//! splice and tee, and the refusal of a registered file where the kernel
//! cannot take one.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use common::{errno, kernel_version, leak, leaked_buf, pattern, pipe, reap};
use ringfence::op::{
    Close, Fadvise, Fallocate, Openat, Openat2, Read, Splice, Statx, SyncFileRange, Target, Tee,
    Write,
};
use ringfence::{
    Error, FallocateMode, IoBufMut, ResolveFlags, SpliceFlags, SyncFileRangeFlags, URingContext,
    URingOperation,
};

/// Reaps exactly one completion, checks it is `user_data`'s, and returns
/// its result.
fn only(ring: &URingContext, user_data: u64) -> io::Result<u32> {
    let mut got = reap(ring, 1);
    assert_eq!(got.len(), 1, "expected only user_data {user_data}: {got:?}");
    let (ud, result) = got.pop().unwrap();
    assert_eq!(ud, user_data, "unexpected completion: {result:?}");
    result
}

/// Adds `op` and returns its result.
fn run<O: ringfence::op::Operation>(ring: &URingContext, op: O) -> io::Result<u32> {
    ring.add(op, 7).expect("add");
    only(ring, 7)
}

/// A copy of `data` that lives for the rest of the process.
fn leaked_bytes(data: &[u8]) -> IoBufMut<'static> {
    IoBufMut::new(leak(data.to_vec()))
}

/// A scratch file on the disk's file system (ext4 here), which has every
/// fallocate mode, unlike tmpfs.
fn disk_file() -> File {
    tempfile::tempfile_in(env!("CARGO_TARGET_TMPDIR")).expect("tempfile in the target dir")
}

/// The position of `file`'s open file description.
fn position(mut file: &File) -> u64 {
    file.stream_position().unwrap()
}

#[test]
fn read_and_write_move_one_buffer_at_an_offset_and_at_the_file_position() {
    let file = Arc::new(tempfile::tempfile().unwrap());
    let ring = ring!(8);
    let data = pattern(8192, 1);

    let written = run(
        &ring,
        Write::new(leaked_bytes(&data), Arc::clone(&file), Some(4096)),
    );
    assert_eq!(written.unwrap(), 8192);
    let mut on_disk = vec![0; 8192];
    file.read_exact_at(&mut on_disk, 4096).unwrap();
    assert_eq!(on_disk, data, "write put other bytes at its offset");
    assert_eq!(position(&file), 0, "an explicit offset moves no position");

    let (buf, view) = leaked_buf(4096, 0xee);
    let read = run(&ring, Read::new(buf, Arc::clone(&file), Some(6144)));
    assert_eq!(read.unwrap(), 4096);
    assert_eq!(view, &data[2048..6144], "read returned other bytes");

    // None: at the file position, which each operation then advances.
    (&*file).seek(SeekFrom::Start(5000)).unwrap();
    let (buf, view) = leaked_buf(100, 0xee);
    assert_eq!(
        run(&ring, Read::new(buf, Arc::clone(&file), None)).unwrap(),
        100
    );
    assert_eq!(view, &data[904..1004]);
    assert_eq!(position(&file), 5100);
    let patch = pattern(50, 2);
    let patched = run(
        &ring,
        Write::new(leaked_bytes(&patch), Arc::clone(&file), None),
    );
    assert_eq!(patched.unwrap(), 50);
    assert_eq!(position(&file), 5150);
    let mut back = vec![0; 50];
    file.read_exact_at(&mut back, 5100).unwrap();
    assert_eq!(back, patch, "the write at the position landed elsewhere");

    // At end of file a read completes with 0.
    let (buf, _) = leaked_buf(16, 0);
    assert_eq!(
        run(&ring, Read::new(buf, Arc::clone(&file), Some(1 << 20))).unwrap(),
        0
    );
}

#[test]
fn a_buffer_longer_than_u32_max_is_refused_at_add_time() {
    let ring = ring!(4);
    let file = Arc::new(tempfile::tempfile().unwrap());
    let len = u32::MAX as usize + 1;
    // SAFETY: the add refuses the buffer before any SQE points at it, so
    // its memory is never touched.
    let huge = unsafe { IoBufMut::from_raw_parts(std::ptr::NonNull::dangling().as_ptr(), len) };
    match ring.add(Read::new(huge, file, Some(0)), 1) {
        Err(Error::LengthTooLong(n)) => assert_eq!(n, len as u64),
        other => panic!("a 4 GiB read was not refused: {other:?}"),
    }
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn sync_file_range_and_fadvise_complete_with_0_and_unknown_flags_give_einval() {
    let file = Arc::new(tempfile::tempfile().unwrap());
    file.write_all_at(&pattern(65536, 3), 0).unwrap();
    let ring = ring!(4);
    let all = SyncFileRangeFlags::all();
    let sfr = SyncFileRange::new(Arc::clone(&file), 4096, 8192, all);
    assert_eq!(run(&ring, sfr).unwrap(), 0);
    // To the end of the file.
    let sfr = SyncFileRange::new(Arc::clone(&file), 0, 0, SyncFileRangeFlags::WRITE);
    assert_eq!(run(&ring, sfr).unwrap(), 0);
    let bad = SyncFileRangeFlags::from_bits_retain(0x100);
    let sfr = SyncFileRange::new(Arc::clone(&file), 0, 0, bad);
    assert_eq!(errno(&run(&ring, sfr)), Some(libc::EINVAL));
    let too_long = SyncFileRange::new(Arc::clone(&file), 0, 1 << 32, all);
    assert!(matches!(
        ring.add(too_long, 1),
        Err(Error::LengthTooLong(_))
    ));

    for advice in [libc::POSIX_FADV_SEQUENTIAL, libc::POSIX_FADV_DONTNEED] {
        let fadvise = Fadvise::new(Arc::clone(&file), 0, 65536, advice);
        assert_eq!(run(&ring, fadvise).unwrap(), 0, "advice {advice}");
    }
    let fadvise = Fadvise::new(Arc::clone(&file), 0, 0, 99);
    assert_eq!(errno(&run(&ring, fadvise)), Some(libc::EINVAL));
    // A 64-bit length goes in `addr`: read from Linux 6.11, refused before.
    let long = Fadvise::new(Arc::clone(&file), 0, 1 << 33, libc::POSIX_FADV_WILLNEED);
    let expected = if kernel_version() >= (6, 11) {
        None
    } else {
        Some(libc::EINVAL)
    };
    assert_eq!(errno(&run(&ring, long)), expected);
    // A pipe has no page cache to advise or write back.
    let (read_end, _write_end) = pipe();
    let on_pipe = Fadvise::new(Arc::new(read_end), 0, 0, libc::POSIX_FADV_NORMAL);
    assert_eq!(errno(&run(&ring, on_pipe)), Some(libc::ESPIPE));
}

/// Writes `data` at 0 and fsyncs, so that every fallocate mode below acts
/// on real blocks.
fn filled(data: &[u8]) -> Arc<File> {
    let file = disk_file();
    file.write_all_at(data, 0).unwrap();
    file.sync_all().unwrap();
    Arc::new(file)
}

#[test]
fn each_fallocate_mode_does_what_it_names() {
    const BLOCK: usize = 4096;
    let ring = ring!(4);
    let data = pattern(4 * BLOCK, 4);
    let read_all = |file: &File| {
        let mut bytes = vec![0; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    };

    // PUNCH_HOLE | KEEP_SIZE: the block reads as zeros, the size stays.
    let file = filled(&data);
    let punch = FallocateMode::PUNCH_HOLE | FallocateMode::KEEP_SIZE;
    let op = Fallocate::new(Arc::clone(&file), BLOCK as u64, BLOCK as u64, punch);
    assert_eq!(run(&ring, op).unwrap(), 0);
    let bytes = read_all(&file);
    assert_eq!(bytes.len(), data.len(), "the punch changed the size");
    assert!(
        bytes[BLOCK..2 * BLOCK].iter().all(|&b| b == 0),
        "the hole is not zeros"
    );
    assert_eq!(
        (&bytes[..BLOCK], &bytes[2 * BLOCK..]),
        (&data[..BLOCK], &data[2 * BLOCK..])
    );

    // KEEP_SIZE past the end: allocated, the size unchanged.
    let file = filled(&data);
    let past = Fallocate::new(
        Arc::clone(&file),
        data.len() as u64,
        1 << 20,
        FallocateMode::KEEP_SIZE,
    );
    assert_eq!(run(&ring, past).unwrap(), 0);
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), data.len() as u64, "KEEP_SIZE grew the file");
    assert!(
        meta.blocks() * 512 >= data.len() as u64 + (1 << 20),
        "nothing allocated"
    );
    // Without it the same range grows the file.
    let grow = Fallocate::new(
        Arc::clone(&file),
        data.len() as u64,
        1 << 20,
        FallocateMode::empty(),
    );
    assert_eq!(run(&ring, grow).unwrap(), 0);
    assert_eq!(
        file.metadata().unwrap().len(),
        data.len() as u64 + (1 << 20)
    );

    // ZERO_RANGE: zeros, the rest untouched.
    let file = filled(&data);
    let zero = Fallocate::new(
        Arc::clone(&file),
        0,
        BLOCK as u64,
        FallocateMode::ZERO_RANGE,
    );
    assert_eq!(run(&ring, zero).unwrap(), 0);
    let bytes = read_all(&file);
    assert!(
        bytes[..BLOCK].iter().all(|&b| b == 0),
        "ZERO_RANGE left data"
    );
    assert_eq!(&bytes[BLOCK..], &data[BLOCK..]);

    // COLLAPSE_RANGE: the second block removed, what follows shifted down.
    let file = filled(&data);
    let collapse = Fallocate::new(
        Arc::clone(&file),
        BLOCK as u64,
        BLOCK as u64,
        FallocateMode::COLLAPSE_RANGE,
    );
    assert_eq!(run(&ring, collapse).unwrap(), 0);
    let bytes = read_all(&file);
    assert_eq!(bytes.len(), 3 * BLOCK);
    assert_eq!(
        (&bytes[..BLOCK], &bytes[BLOCK..]),
        (&data[..BLOCK], &data[2 * BLOCK..])
    );

    // INSERT_RANGE: a zero block inserted, what follows shifted up.
    let file = filled(&data);
    let insert = Fallocate::new(
        Arc::clone(&file),
        BLOCK as u64,
        BLOCK as u64,
        FallocateMode::INSERT_RANGE,
    );
    assert_eq!(run(&ring, insert).unwrap(), 0);
    let bytes = read_all(&file);
    assert_eq!(bytes.len(), 5 * BLOCK);
    assert!(bytes[BLOCK..2 * BLOCK].iter().all(|&b| b == 0));
    assert_eq!(
        (&bytes[..BLOCK], &bytes[2 * BLOCK..]),
        (&data[..BLOCK], &data[BLOCK..])
    );

    // UNSHARE_RANGE: ext4 has no shared blocks, and says so.
    let file = filled(&data);
    let unshare = Fallocate::new(
        Arc::clone(&file),
        0,
        BLOCK as u64,
        FallocateMode::UNSHARE_RANGE,
    );
    assert_eq!(errno(&run(&ring, unshare)), Some(libc::EOPNOTSUPP));
    // A punch without KEEP_SIZE: fallocate(2) refuses it with EOPNOTSUPP.
    let bad = Fallocate::new(
        Arc::clone(&file),
        0,
        BLOCK as u64,
        FallocateMode::PUNCH_HOLE,
    );
    assert_eq!(errno(&run(&ring, bad)), Some(libc::EOPNOTSUPP));
}

/// A directory holding `inner/file` with `contents`, and `outside` next to
/// `inner`.
fn tree(contents: &[u8]) -> tempfile::TempDir {
    // On the disk's file system, whose statx answers the mask (below).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir(dir.path().join("inner")).unwrap();
    std::fs::write(dir.path().join("inner/file"), contents).unwrap();
    std::fs::write(dir.path().join("outside"), b"outside").unwrap();
    dir
}

/// Takes the descriptor an open completed with.
fn opened(result: io::Result<u32>) -> File {
    let fd = result.expect("open failed") as RawFd;
    // SAFETY: an open's completion is a new descriptor nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

/// The contents of `file` from offset 0.
fn contents(file: &File) -> Vec<u8> {
    let mut bytes = vec![0; file.metadata().unwrap().len() as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

#[test]
fn openat_and_openat2_open_a_real_file_and_resolve_beneath_refuses_dot_dot() {
    let dir = tree(b"inner contents");
    let ring = ring!(4);
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    let file = opened(run(
        &ring,
        Openat::new(dir.path().join("inner/file"), flags, 0),
    ));
    assert_eq!(contents(&file), b"inner contents");

    let inner = Arc::new(File::open(dir.path().join("inner")).unwrap());
    let relative = Openat::new("file", flags, 0).dir(Arc::clone(&inner));
    assert_eq!(contents(&opened(run(&ring, relative))), b"inner contents");
    let created = Openat::new(
        "new",
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
        0o640,
    )
    .dir(Arc::clone(&inner));
    let created = opened(run(&ring, created));
    assert_eq!(created.metadata().unwrap().mode() & 0o777, 0o640 & !umask());
    let missing = Openat::new("missing", flags, 0).dir(Arc::clone(&inner));
    assert_eq!(errno(&run(&ring, missing)), Some(libc::ENOENT));

    let beneath = ResolveFlags::BENEATH;
    let two = Openat2::new("file", flags, 0, beneath).dir(Arc::clone(&inner));
    assert_eq!(contents(&opened(run(&ring, two))), b"inner contents");
    let escape = Openat2::new("../outside", flags, 0, beneath).dir(Arc::clone(&inner));
    assert_eq!(errno(&run(&ring, escape)), Some(libc::EXDEV));
    // The same path without the rule opens.
    let free = Openat2::new("../outside", flags, 0, ResolveFlags::empty()).dir(Arc::clone(&inner));
    assert_eq!(contents(&opened(run(&ring, free))), b"outside");
    // openat2 refuses a mode without O_CREAT, where openat ignores it.
    let moded = Openat2::new("file", flags, 0o600, ResolveFlags::empty()).dir(inner);
    assert_eq!(errno(&run(&ring, moded)), Some(libc::EINVAL));

    match ring.add(Openat::new("nul\0inside", flags, 0), 1) {
        Err(Error::NulInPath(path)) => assert_eq!(path.as_os_str().len(), 10),
        other => panic!("a path with a NUL was not refused: {other:?}"),
    }
}

/// The process's umask.
fn umask() -> u32 {
    // SAFETY: umask has no memory preconditions; it is set back at once.
    let mask = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(mask) };
    mask
}

#[test]
fn close_closes_the_descriptor_it_owns() {
    let ring = ring!(4);
    let file = File::open("/dev/null").unwrap();
    let fd = file.as_raw_fd();
    assert_eq!(run(&ring, Close::new(OwnedFd::from(file))).unwrap(), 0);
    // SAFETY: F_GETFD takes no pointer; on a closed descriptor it fails.
    let ret = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_eq!(ret, -1, "the descriptor is still open");
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
}

#[test]
fn statx_reports_the_size_of_a_path_and_of_an_open_file() {
    let dir = tree(&pattern(12345, 5));
    let ring = ring!(4);
    // SAFETY: all-zero bytes are a valid statx.
    let mut buf: Box<libc::statx> = Box::new(unsafe { std::mem::zeroed() });
    let ptr: *mut libc::statx = &mut *buf;
    // SAFETY: `buf` outlives the operation, which `run` reaps, and is not
    // touched until then.
    let statx = unsafe { Statx::new(dir.path().join("inner/file"), 0, libc::STATX_SIZE, ptr) };
    assert_eq!(run(&ring, statx).unwrap(), 0);
    assert_ne!(buf.stx_mask & libc::STATX_SIZE, 0);
    assert_eq!(buf.stx_size, 12345);
    // The mask reaches the file system: ext4 reports the birth time only
    // when asked for it.
    assert_eq!(
        buf.stx_mask & libc::STATX_BTIME,
        0,
        "birth time not asked for"
    );
    let both = libc::STATX_SIZE | libc::STATX_BTIME;
    // SAFETY: as above.
    let statx = unsafe { Statx::new(dir.path().join("inner/file"), 0, both, ptr) };
    assert_eq!(run(&ring, statx).unwrap(), 0);
    assert_ne!(buf.stx_mask & libc::STATX_BTIME, 0, "birth time asked for");

    // AT_EMPTY_PATH: the directory target's own file.
    let file = Arc::new(File::open(dir.path().join("outside")).unwrap());
    // SAFETY: all-zero bytes are a valid statx; the first statx completed.
    *buf = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let statx = unsafe { Statx::new("", libc::AT_EMPTY_PATH, libc::STATX_SIZE, ptr) }.dir(file);
    assert_eq!(run(&ring, statx).unwrap(), 0);
    assert_eq!(buf.stx_size, b"outside".len() as u64);
    // SAFETY: as above.
    let missing = unsafe { Statx::new(dir.path().join("nope"), 0, libc::STATX_SIZE, ptr) };
    assert_eq!(errno(&run(&ring, missing)), Some(libc::ENOENT));
}

#[test]
fn splice_and_tee_move_bytes_between_pipes_and_files() {
    let ring = ring!(4);
    let data = pattern(3000, 6);
    let (from_read, mut from_write) = pipe();
    from_write.write_all(&data).unwrap();
    let (to_read, to_write) = pipe();
    let (from_read, to_write) = (Arc::new(from_read), Arc::new(to_write));

    // tee copies without consuming: the input still holds everything.
    let tee = Tee::new(
        Arc::clone(&from_read),
        Arc::clone(&to_write),
        1000,
        SpliceFlags::empty(),
    );
    assert_eq!(run(&ring, tee).unwrap(), 1000);
    let mut teed = vec![0; 1000];
    (&to_read).read_exact_at_pipe(&mut teed);
    assert_eq!(teed, data[..1000]);

    // splice pipe -> file at an offset: consumes from the pipe.
    let file = Arc::new(tempfile::tempfile().unwrap());
    let to_file = Splice::new(
        Arc::clone(&from_read),
        None,
        Arc::clone(&file),
        Some(100),
        3000,
        SpliceFlags::empty(),
    );
    assert_eq!(run(&ring, to_file).unwrap(), 3000);
    let mut on_disk = vec![0; 3000];
    file.read_exact_at(&mut on_disk, 100).unwrap();
    assert_eq!(on_disk, data, "splice put other bytes in the file");
    assert_eq!(position(&file), 0, "an offset moves no position");

    // splice file -> pipe from an offset.
    let from_file = Splice::new(
        Arc::clone(&file),
        Some(600),
        Arc::clone(&to_write),
        None,
        500,
        SpliceFlags::empty(),
    );
    assert_eq!(run(&ring, from_file).unwrap(), 500);
    let mut piped = vec![0; 500];
    (&to_read).read_exact_at_pipe(&mut piped);
    assert_eq!(piped, data[500..1000]);

    // An offset on a pipe: ESPIPE.
    let bad = Splice::new(
        Arc::clone(&from_read),
        Some(0),
        Arc::clone(&file),
        Some(0),
        1,
        SpliceFlags::empty(),
    );
    assert_eq!(errno(&run(&ring, bad)), Some(libc::ESPIPE));
    // Neither end a pipe: EINVAL.
    let other = Arc::new(tempfile::tempfile().unwrap());
    let no_pipe = Splice::new(
        Arc::clone(&file),
        Some(0),
        other,
        Some(0),
        10,
        SpliceFlags::empty(),
    );
    assert_eq!(errno(&run(&ring, no_pipe)), Some(libc::EINVAL));
}

/// Reads exactly `buf.len()` bytes from a pipe.
trait PipeRead {
    fn read_exact_at_pipe(self, buf: &mut [u8]);
}

impl PipeRead for &File {
    fn read_exact_at_pipe(mut self, buf: &mut [u8]) {
        io::Read::read_exact(&mut self, buf).unwrap();
    }
}

/// Registers a sparse file table of `slots` empty slots on `ring`
/// (`IORING_REGISTER_FILES` with every descriptor -1, which
/// `io_uring_register(2)` says leaves a slot empty; the context has no
/// call for it yet).
fn register_sparse_files(ring: &URingContext, slots: u32) {
    let fds = vec![-1i32; slots as usize];
    // IORING_REGISTER_FILES.
    const REGISTER_FILES: libc::c_uint = 2;
    // SAFETY: the kernel reads `slots` descriptors from `fds`, alive for
    // the call; the ring is open.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            REGISTER_FILES,
            fds.as_ptr(),
            slots,
        )
    };
    assert_eq!(ret, 0, "registering files: {}", io::Error::last_os_error());
}

#[test]
fn opens_install_into_fixed_slots_that_reads_use_and_close_empties() {
    let dir = tree(b"slotted");
    let ring = ring!(8);
    register_sparse_files(&ring, 4);
    let path = dir.path().join("inner/file");
    let flags = libc::O_RDONLY;

    assert_eq!(
        run(&ring, Openat::new(&path, flags, 0).fixed_slot(2)).unwrap(),
        0
    );
    let (buf, view) = leaked_buf(7, 0);
    assert_eq!(
        run(&ring, Read::new(buf, Target::fixed(2), Some(0))).unwrap(),
        7
    );
    assert_eq!(view, b"slotted");

    // The kernel picks a free slot: not 2, which is taken.
    let two = Openat2::new(&path, flags, 0, ResolveFlags::empty()).fixed_slot_alloc();
    let picked = run(&ring, two).unwrap();
    assert!(picked < 4 && picked != 2, "slot {picked}");
    let (buf, view) = leaked_buf(7, 0);
    assert_eq!(
        run(&ring, Read::new(buf, Target::fixed(picked), Some(0))).unwrap(),
        7
    );
    assert_eq!(view, b"slotted");

    // A splice whose input is a registered file.
    let (to_read, to_write) = pipe();
    let splice = Splice::new(
        Target::fixed(2),
        Some(1),
        Arc::new(to_write),
        None,
        6,
        SpliceFlags::empty(),
    );
    assert_eq!(run(&ring, splice).unwrap(), 6);
    let mut piped = [0; 6];
    (&to_read).read_exact_at_pipe(&mut piped);
    assert_eq!(&piped, b"lotted");

    // A splice whose output is a registered file (the SQE's FIXED_FILE).
    let written = dir.path().join("written");
    let out_slot = (0..4).find(|&s| s != 2 && s != picked).unwrap();
    let create = libc::O_WRONLY | libc::O_CREAT;
    assert_eq!(
        run(
            &ring,
            Openat::new(&written, create, 0o600).fixed_slot(out_slot)
        )
        .unwrap(),
        0
    );
    let (from_read, mut from_write) = pipe();
    from_write.write_all(b"into a slot").unwrap();
    let splice = Splice::new(
        Arc::new(from_read),
        None,
        Target::fixed(out_slot),
        Some(3),
        11,
        SpliceFlags::empty(),
    );
    assert_eq!(run(&ring, splice).unwrap(), 11);
    assert_eq!(std::fs::read(&written).unwrap(), b"\0\0\0into a slot");

    // O_CLOEXEC has no meaning for a slot: EINVAL.
    let cloexec = Openat::new(&path, flags | libc::O_CLOEXEC, 0).fixed_slot(0);
    assert_eq!(errno(&run(&ring, cloexec)), Some(libc::EINVAL));

    assert_eq!(run(&ring, Close::fixed_slot(2)).unwrap(), 0);
    let (buf, _) = leaked_buf(7, 0);
    assert_eq!(
        errno(&run(&ring, Read::new(buf, Target::fixed(2), Some(0)))),
        Some(libc::EBADF)
    );
    assert_eq!(
        errno(&run(&ring, Close::fixed_slot(2))),
        Some(libc::EBADF),
        "already empty"
    );
    assert_eq!(
        errno(&run(&ring, Close::fixed_slot(100))),
        Some(libc::EINVAL),
        "past the table"
    );
}

#[test]
fn operations_that_cannot_take_a_registered_file_refuse_one_at_add_time() {
    let ring = ring!(4);
    let fixed = Target::fixed(0);
    let refused = |result: ringfence::Result<()>, op: URingOperation| match result {
        Err(Error::FixedFileNotSupported(named)) => assert_eq!(named, op),
        other => panic!("{op:?} with a fixed directory was not refused: {other:?}"),
    };
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    refused(
        ring.add(Openat::new("f", flags, 0).dir(fixed.clone()), 1),
        URingOperation::Openat,
    );
    let two = Openat2::new("f", flags, 0, ResolveFlags::empty()).dir(fixed.clone());
    refused(ring.add(two, 2), URingOperation::Openat2);
    // SAFETY: refused before any SQE points at the (null) buffer.
    let statx = unsafe { Statx::new("f", 0, libc::STATX_SIZE, std::ptr::null_mut()) };
    refused(ring.add(statx.dir(fixed), 3), URingOperation::Statx);
    // `Close` takes an `OwnedFd` or a slot: no `Target` to be fixed.
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn read_write_and_statx_pin_caller_memory_so_their_label_is_theirs_alone() {
    let ring = ring!(8);
    let (read_end, mut write_end) = pipe();
    let read_end = Arc::new(read_end);
    // A read of an empty pipe stays in flight.
    let (buf, view) = leaked_buf(5, 0);
    ring.add(Read::new(buf, Arc::clone(&read_end), None), 1)
        .unwrap();
    ring.submit().unwrap();
    let fadvise = Fadvise::new(Arc::clone(&read_end), 0, 0, libc::POSIX_FADV_NORMAL);
    assert!(matches!(
        ring.add(fadvise, 1),
        Err(Error::DuplicateUserData(1))
    ));
    // A nop in flight (not yet reaped) keeps a statx off its label.
    ring.add(ringfence::op::Nop::new(), 2).unwrap();
    let mut stat: Box<libc::statx> = Box::new(
        // SAFETY: all-zero bytes are a valid statx.
        unsafe { std::mem::zeroed() },
    );
    // SAFETY: never queued: the add is refused.
    let statx = unsafe { Statx::new("/", 0, libc::STATX_SIZE, &mut *stat) };
    assert!(matches!(
        ring.add(statx, 2),
        Err(Error::DuplicateUserData(2))
    ));
    let (buf, _) = leaked_buf(1, 0);
    let write = Write::new(buf, Arc::new(tempfile::tempfile().unwrap()), Some(0));
    assert!(matches!(
        ring.add(write, 2),
        Err(Error::DuplicateUserData(2))
    ));

    write_end.write_all(b"hello").unwrap();
    let mut done = reap(&ring, 2);
    done.sort_by_key(|(ud, _)| *ud);
    assert_eq!((done[0].0, done[0].1.as_ref().unwrap()), (1, &5));
    assert_eq!(view, b"hello");
}
