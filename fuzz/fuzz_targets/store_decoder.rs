//! The journal and snapshot decoder that recovery runs over the files in the data directory.
//!
//! Input: one byte choosing journal records or snapshot entries, then a whole file. Properties:
//! nothing panics on any bytes; the decoder returns records, in file order, at offsets inside
//! the file, and how the frames ended (at an offset inside the file), or a clear error naming
//! the offset of the frame that does not decode.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wheresmyfox::store::frame::{self, Ending};
use wheresmyfox::store::record::{self, Record, SnapshotEntry};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, file)) = data.split_first() else {
        return;
    };
    let snapshot = choice & 1 == 1;
    let magic = if snapshot {
        frame::SNAPSHOT_MAGIC
    } else {
        frame::JOURNAL_MAGIC
    };
    // Recovery refuses a bad header, but the frames are decoded here either way, so a
    // mutation of the header does not hide the rest of the file from the fuzzer.
    let _ = frame::decode_header(file, magic);
    let base = frame::HEADER_LEN.min(file.len());
    let body = &file[base..];
    let mut offsets = Vec::new();
    let decoded = if snapshot {
        record::decode_frames::<SnapshotEntry>(body, base, |offset, _| offsets.push(offset))
    } else {
        record::decode_frames::<Record>(body, base, |offset, _| offsets.push(offset))
    };
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    assert!(
        offsets
            .iter()
            .all(|&o| o + frame::FRAME_OVERHEAD <= file.len())
    );
    match decoded {
        Ok(Ending::Clean) => {}
        Ok(Ending::Unused { offset }) => {
            assert!(offset >= base && offset < file.len());
            assert!(file[offset..].iter().all(|&b| b == 0));
            assert!(offsets.last().is_none_or(|&last| last < offset));
        }
        Ok(Ending::Torn { offset } | Ending::Corrupt { offset }) => {
            assert!(offset >= base && offset < file.len());
            assert!(offsets.last().is_none_or(|&last| last < offset));
        }
        Err(error) => {
            assert!(error.offset >= base && error.offset < file.len());
            assert!(offsets.last().is_none_or(|&last| last < error.offset));
            assert!(!error.reason.is_empty());
        }
    }
});
