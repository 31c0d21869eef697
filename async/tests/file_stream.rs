//! `File` as a byte stream: one position shared by reads, writes and
//! seeks, as `std::fs::File` has it, over the ring.

use std::io::SeekFrom;

use futures::executor::block_on;
use futures::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use ringfence_async::{Driver, File};

/// Deterministic bytes that differ at every offset a bug could confuse.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn written_bytes_read_back_through_the_stream_after_a_seek() {
    let driver = Driver::new(16).unwrap();
    let mut file = File::from_std(&driver, tempfile::tempfile().unwrap());
    // Larger than the stream's 64 KiB buffers, and not a multiple of them.
    let data = pattern(300_000);
    block_on(async {
        file.write_all(&data).await.unwrap();
        file.flush().await.unwrap();
        assert_eq!(file.seek(SeekFrom::Start(0)).await.unwrap(), 0);
        let mut back = Vec::new();
        file.read_to_end(&mut back).await.unwrap();
        assert!(back == data, "the bytes read back differ");
        assert_eq!(
            file.seek(SeekFrom::Current(0)).await.unwrap(),
            data.len() as u64
        );
    });
}

#[test]
fn reads_writes_and_seeks_share_one_position() {
    let driver = Driver::new(8).unwrap();
    let std_file = tempfile::tempfile().unwrap();
    let mut file = File::from_std(&driver, std_file.try_clone().unwrap());
    block_on(async {
        file.write_all(b"0123456789").await.unwrap();
        file.seek(SeekFrom::Start(2)).await.unwrap();
        let mut two = [0u8; 2];
        file.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"23");
        // The read went ahead into the buffer; the write lands at the
        // caller's position (4), not past what was read ahead.
        file.write_all(b"ab").await.unwrap();
        file.flush().await.unwrap();
        let mut rest = String::new();
        file.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "6789");
        assert_eq!(file.seek(SeekFrom::End(-3)).await.unwrap(), 7);
        let mut last = String::new();
        file.read_to_string(&mut last).await.unwrap();
        assert_eq!(last, "789");
    });
    let mut on_disk = String::new();
    std::io::Read::read_to_string(&mut &std_file, &mut on_disk).unwrap();
    assert_eq!(on_disk, "0123ab6789");
}

#[test]
fn a_seek_before_the_start_fails_and_leaves_the_position() {
    let driver = Driver::new(4).unwrap();
    let mut file = File::from_std(&driver, tempfile::tempfile().unwrap());
    block_on(async {
        file.write_all(b"abc").await.unwrap();
        let err = file.seek(SeekFrom::Current(-4)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(file.seek(SeekFrom::Current(0)).await.unwrap(), 3);
    });
}
