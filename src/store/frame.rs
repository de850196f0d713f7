//! Record framing shared by the journal and snapshots. Pure, so it can be fuzzed alone.
//!
//! A file is an 16-byte header, then frames:
//!
//! ```text
//! header: magic (4 bytes, "WMFJ" or "WMFS") | format version (u32 LE) | generation (u64 LE)
//! frame:  payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload (JSON)
//! ```
//!
//! Reading tells four endings apart:
//! - `Clean`: the last frame ends exactly at the end of the file;
//! - `Unused`: the last frame is followed by zeros only: space a journal prepared ahead of its
//!   writer (see `journal`). No frame is empty, so a zero length marks where the frames end;
//! - `Torn`: the file ends inside the last frame, or the last frame's checksum fails and nothing
//!   follows it: a write cut short by a crash. Everything before it is good;
//! - `Corrupt`: a frame fails its checksum (or declares an impossible length) and more data
//!   follows: damage in the middle, which is never silently skipped.

/// Current format version of journal and snapshot files.
pub const FORMAT_VERSION: u32 = 1;
/// Journal file magic.
pub const JOURNAL_MAGIC: [u8; 4] = *b"WMFJ";
/// Snapshot file magic.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"WMFS";
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Frame overhead in bytes.
pub const FRAME_OVERHEAD: usize = 8;
/// Largest payload accepted when reading (a guard against a damaged length field).
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// A file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 4],
    pub version: u32,
    pub generation: u64,
}

/// How reading a file's frames ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Clean,
    /// The frames end at this offset, and only zeros follow.
    Unused {
        offset: usize,
    },
    /// A torn last frame starts at this offset; the file should be cut there.
    Torn {
        offset: usize,
    },
    /// Damage at this offset with more data after it.
    Corrupt {
        offset: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the file is shorter than its header")]
    Short,
    #[error("not a wheresmyfox data file (wrong magic)")]
    Magic,
    #[error("format version {0} is newer than this program understands ({FORMAT_VERSION})")]
    Version(u32),
}

// === Writing ===

pub fn encode_header(magic: [u8; 4], generation: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..4].copy_from_slice(&magic);
    out[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[8..].copy_from_slice(&generation.to_le_bytes());
    out
}

/// Appends one frame holding `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(FRAME_OVERHEAD + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

// === Reading ===

pub fn decode_header(bytes: &[u8], magic: [u8; 4]) -> Result<Header, HeaderError> {
    if bytes.len() < HEADER_LEN {
        return Err(HeaderError::Short);
    }
    if bytes[..4] != magic {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION || version == 0 {
        return Err(HeaderError::Version(version));
    }
    let generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok(Header {
        magic,
        version,
        generation,
    })
}

/// Splits the frames after the header. Calls `each(offset, payload)` for every good frame, in
/// order, and reports how the data ended.
pub fn read_frames<'a>(
    body: &'a [u8],
    base: usize,
    mut each: impl FnMut(usize, &'a [u8]),
) -> Ending {
    let mut at = 0;
    while at < body.len() {
        let rest = &body[at..];
        // Checked only where a frame would start with a zero length, so reading stays linear.
        if rest[..rest.len().min(4)].iter().all(|&b| b == 0) && rest.iter().all(|&b| b == 0) {
            return Ending::Unused { offset: base + at };
        }
        if rest.len() < FRAME_OVERHEAD {
            return Ending::Torn { offset: base + at };
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 {
            // Never written: a zero-length frame with data after it is damage.
            return Ending::Corrupt { offset: base + at };
        }
        if len > MAX_PAYLOAD {
            // An impossible length: a torn write can leave zeros, never this, unless it is last.
            return if looks_like_tail(rest) {
                Ending::Torn { offset: base + at }
            } else {
                Ending::Corrupt { offset: base + at }
            };
        }
        let end = FRAME_OVERHEAD + len;
        if rest.len() < end {
            return Ending::Torn { offset: base + at };
        }
        let payload = &rest[FRAME_OVERHEAD..end];
        if crc32fast::hash(payload) != crc {
            // A write cut short inside prepared space leaves zeros after the frame, not an end.
            return if rest[end..].iter().all(|&b| b == 0) {
                Ending::Torn { offset: base + at }
            } else {
                Ending::Corrupt { offset: base + at }
            };
        }
        each(base + at, payload);
        at += end;
    }
    Ending::Clean
}

/// A damaged length with nothing but zeros after it is what a crash mid-append leaves behind
/// on file systems that extend the file before the data lands, and what a crash mid-write
/// leaves in a journal's prepared space.
fn looks_like_tail(rest: &[u8]) -> bool {
    rest[FRAME_OVERHEAD.min(rest.len())..]
        .iter()
        .all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_frame(p, &mut out);
        }
        out
    }

    fn collect(body: &[u8]) -> (Vec<Vec<u8>>, Ending) {
        let mut got = Vec::new();
        let ending = read_frames(body, 0, |_, p| got.push(p.to_vec()));
        (got, ending)
    }

    #[test]
    fn round_trips() {
        let body = frames(&[b"one", b"2", b"three"]);
        let (got, ending) = collect(&body);
        assert_eq!(got, vec![b"one".to_vec(), b"2".to_vec(), b"three".to_vec()]);
        assert_eq!(ending, Ending::Clean);
        let header = encode_header(JOURNAL_MAGIC, 7);
        assert_eq!(decode_header(&header, JOURNAL_MAGIC).unwrap().generation, 7);
        assert_eq!(
            decode_header(&header, SNAPSHOT_MAGIC),
            Err(HeaderError::Magic)
        );
    }

    #[test]
    fn a_cut_last_frame_is_torn_at_every_length() {
        let body = frames(&[b"first", b"second record"]);
        let second = FRAME_OVERHEAD + 5;
        for cut in second + 1..body.len() {
            let (got, ending) = collect(&body[..cut]);
            assert_eq!(got.len(), 1, "cut at {cut}");
            assert_eq!(ending, Ending::Torn { offset: second });
        }
    }

    #[test]
    fn damage_in_the_middle_is_corrupt_and_at_the_end_is_torn() {
        let mut body = frames(&[b"first", b"second", b"third"]);
        let second = FRAME_OVERHEAD + 5;
        body[second + FRAME_OVERHEAD] ^= 0xff;
        let (got, ending) = collect(&body);
        assert_eq!(got.len(), 1);
        assert_eq!(ending, Ending::Corrupt { offset: second });

        let mut body = frames(&[b"first", b"last"]);
        let last = body.len() - 1;
        body[last] ^= 0xff;
        assert_eq!(collect(&body).1, Ending::Torn { offset: second });
    }

    #[test]
    fn zeros_after_the_frames_are_unused_space_and_a_write_cut_short_in_them_is_torn() {
        let mut body = frames(&[b"first", b"second"]);
        let end = body.len();
        body.resize(end + 4096, 0);
        let (got, ending) = collect(&body);
        assert_eq!(got.len(), 2);
        assert_eq!(ending, Ending::Unused { offset: end });
        // Fewer zeros than a frame header are unused space too.
        let mut short = frames(&[b"first"]);
        short.extend_from_slice(&[0, 0, 0]);
        assert_eq!(collect(&short).1, Ending::Unused { offset: 13 });

        // A frame whose payload only partly reached the disk, zeros after it.
        let mut torn = frames(&[b"first", b"second record"]);
        let second = FRAME_OVERHEAD + 5;
        for byte in &mut torn[second + FRAME_OVERHEAD + 4..] {
            *byte = 0;
        }
        torn.resize(torn.len() + 4096, 0);
        let (got, ending) = collect(&torn);
        assert_eq!(got.len(), 1);
        assert_eq!(ending, Ending::Torn { offset: second });

        // Zeros with a record after them are damage, never an end.
        let mut hole = frames(&[b"first"]);
        hole.resize(hole.len() + 64, 0);
        hole.extend(frames(&[b"after the hole"]));
        let (got, ending) = collect(&hole);
        assert_eq!(got.len(), 1);
        assert_eq!(ending, Ending::Corrupt { offset: 13 });
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0..500u32 {
            let bytes: Vec<u8> = (0..(seed % 97))
                .map(|i| (i.wrapping_mul(seed) ^ seed) as u8)
                .collect();
            let _ = collect(&bytes);
            let _ = decode_header(&bytes, JOURNAL_MAGIC);
        }
    }
}
