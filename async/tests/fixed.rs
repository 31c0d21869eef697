//! Registered buffers through the async layer: the pool hands each out
//! once, takes it back on drop, and fixed reads and writes move the bytes.

use futures::executor::block_on;
use ringfence::URingContext;
use ringfence_async::{Driver, File};

fn driver_with_buffers(count: usize, len: usize) -> Driver {
    let ctx = URingContext::builder(8)
        .buffers(count, len)
        .build()
        .expect("a ring with registered buffers");
    Driver::builder(ctx).spawn().expect("a driver")
}

#[test]
fn each_registered_buffer_is_held_once_and_comes_back_on_drop() {
    let driver = driver_with_buffers(2, 4096);
    let first = driver.fixed_buffer().expect("buffer 0");
    let second = driver.fixed_buffer().expect("buffer 1");
    assert_ne!(first.index(), second.index());
    assert!(driver.fixed_buffer().is_none(), "both are held");
    let index = second.index();
    drop(second);
    assert_eq!(driver.fixed_buffer().map(|buf| buf.index()), Some(index));
    assert!(
        Driver::new(4).unwrap().fixed_buffer().is_none(),
        "a ring without any"
    );
}

#[test]
fn fixed_writes_and_reads_move_the_bytes_and_give_the_buffer_back() {
    let driver = driver_with_buffers(1, 8192);
    let file = File::from_std(&driver, tempfile::tempfile().unwrap());
    let mut buf = driver.fixed_buffer().unwrap();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    buf.extend_from_slice(&pattern);
    let (written, mut buf) = block_on(file.write_fixed(buf, 4096));
    assert_eq!(written.unwrap(), 8192);
    buf.clear();
    let (read, buf) = block_on(file.read_fixed(buf, 4096 + 100));
    assert_eq!(read.unwrap(), 8192 - 100, "to the end of the file");
    assert_eq!(&buf[..], &pattern[100..]);
    // A read through the plain API sees the same bytes.
    let (read, plain) = block_on(file.read_at(Vec::with_capacity(16), 4096));
    assert_eq!(read.unwrap(), 16);
    assert_eq!(plain, pattern[..16]);
}

#[test]
fn a_fixed_write_past_the_largest_offset_fails_before_the_kernel() {
    let driver = driver_with_buffers(1, 512);
    let file = File::from_std(&driver, tempfile::tempfile().unwrap());
    let buf = driver.fixed_buffer().unwrap();
    let index = buf.index();
    let (result, buf) = block_on(file.write_fixed(buf, u64::MAX));
    assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(buf.index(), index, "the buffer comes back with the error");
    assert_eq!(driver.in_flight(), 0);
}
