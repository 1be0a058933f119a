//! The `base64` and `gzip` steps: text → bytes, bounded.

use super::Problem;
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use std::io::Read;

/// The most a `gzip` step may produce: 8 MiB, 32 times the largest SQS message. A few hundred
/// bytes of gzip can expand to gigabytes (a "zip bomb"); decompression stops one byte past
/// this and the message is a reject, so memory stays bounded whatever arrives.
pub const MAX_DECODED_BYTES: usize = 8 * 1024 * 1024;

/// Standard alphabet; producers differ on padding, so it is optional.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64 text, ignoring ASCII whitespace (line-wrapped encoders).
pub fn base64(text: &[u8]) -> Result<Vec<u8>, Problem> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    B64.decode(compact).map_err(|_| Problem::Base64)
}

/// Decompresses gzip (one member or several concatenated), at most [`MAX_DECODED_BYTES`].
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, Problem> {
    gunzip_limited(data, MAX_DECODED_BYTES)
}

/// [`gunzip`] with an explicit limit (tests use a small one).
fn gunzip_limited(data: &[u8], limit: usize) -> Result<Vec<u8>, Problem> {
    if data.is_empty() {
        return Err(Problem::Gzip);
    }
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(data)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| Problem::Gzip)?;
    if out.len() > limit {
        return Err(Problem::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn base64_with_and_without_padding_and_line_breaks() {
        assert_eq!(base64(b"aGk=").unwrap(), b"hi");
        assert_eq!(base64(b"aGk").unwrap(), b"hi");
        assert_eq!(base64(b"aG\r\nk=\n").unwrap(), b"hi");
        assert_eq!(base64(b"a*k="), Err(Problem::Base64));
        assert_eq!(base64(b"aGk=="), Err(Problem::Base64));
        assert_eq!(base64(b"\xff\xfe"), Err(Problem::Base64));
        assert_eq!(base64(b"").unwrap(), b"");
    }

    #[test]
    fn gzip_round_trip_and_concatenated_members() {
        assert_eq!(gunzip(&gzip(b"{\"a\":1}")).unwrap(), b"{\"a\":1}");
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(gunzip(&two).unwrap(), b"abcd");
    }

    #[test]
    fn truncated_corrupt_and_empty_gzip_are_errors() {
        let full = gzip(&[b'x'; 1000]);
        for cut in [1, 5, 10, full.len() / 2, full.len() - 1] {
            assert_eq!(gunzip(&full[..cut]), Err(Problem::Gzip), "cut at {cut}");
        }
        let mut corrupt = full.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        assert!(gunzip(&corrupt).is_err());
        assert_eq!(gunzip(b""), Err(Problem::Gzip));
        assert_eq!(gunzip(b"plain text, not gzip"), Err(Problem::Gzip));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB; decoding stops just past 8 MiB.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&chunk).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert_eq!(gunzip(&bomb), Err(Problem::TooLarge));
        // Exactly at the limit is fine; one byte over is not.
        assert_eq!(gunzip_limited(&gzip(&[7; 100]), 100).unwrap().len(), 100);
        assert_eq!(
            gunzip_limited(&gzip(&[7; 101]), 100),
            Err(Problem::TooLarge)
        );
    }
}
