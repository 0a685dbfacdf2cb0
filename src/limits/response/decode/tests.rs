use std::io::Write;

use super::*;

fn text() -> Vec<u8> {
    lines(2000)
}

/// Several zstd blocks' worth (a block decodes to at most 128 KiB).
fn big_text() -> Vec<u8> {
    lines(20_000)
}

fn lines(count: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for i in 0..count {
        text.extend_from_slice(
            format!("data: {{\"n\":{i},\"word\":\"w{}\"}}\n\n", i * 7919 % 1000).as_bytes(),
        );
    }
    text
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        e.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Decodes `encoded` fed in pieces of `piece` bytes.
fn decode_in_pieces(
    encoding: &str,
    encoded: &[u8],
    piece: usize,
    limit: u64,
) -> Result<Vec<u8>, DecodeError> {
    let mut decoder = Decoder::for_encoding_with_limit(encoding, limit).unwrap();
    let mut out = Vec::new();
    for chunk in encoded.chunks(piece) {
        let decoded = decoder.feed(chunk)?;
        assert!(decoded.len() as u64 <= limit);
        out.extend_from_slice(&decoded);
    }
    Ok(out)
}

#[test]
fn every_encoding_round_trips_in_small_pieces() {
    let text = text();
    let cases: [(&str, Vec<u8>); 7] = [
        ("gzip", gzip(&text)),
        ("x-gzip", gzip(&text)),
        ("deflate", zlib(&text)),
        ("deflate", raw_deflate(&text)),
        ("br", brotli(&text)),
        ("zstd", zstd(&text)),
        ("identity", text.clone()),
    ];
    for (encoding, encoded) in &cases {
        for piece in [1, 2, 3, 7, 64, 1000, encoded.len().max(1)] {
            let decoded = decode_in_pieces(encoding, encoded, piece, u64::MAX);
            assert_eq!(
                decoded.as_deref(),
                Ok(&text[..]),
                "{encoding} in pieces of {piece}"
            );
        }
    }
}

#[test]
fn output_arrives_as_input_does_not_only_at_the_end() {
    let text = big_text();
    for (encoding, encoded) in [
        ("gzip", gzip(&text)),
        ("br", brotli(&text)),
        ("zstd", zstd(&text)),
    ] {
        let mut decoder = Decoder::for_encoding(encoding).unwrap();
        let half = decoder.feed(&encoded[..encoded.len() / 2]).unwrap();
        assert!(
            !half.is_empty(),
            "{encoding} produced nothing for half its input"
        );
        assert!(text.starts_with(&half), "{encoding}");
    }
}

#[test]
fn encoding_names_are_case_insensitive_and_trimmed() {
    assert_eq!(
        Decoder::for_encoding(" GZip ").map(|d| d.encoding()),
        Some("gzip")
    );
    assert_eq!(
        Decoder::for_encoding("X-GZIP").map(|d| d.encoding()),
        Some("gzip")
    );
    assert_eq!(
        Decoder::for_encoding("BR").map(|d| d.encoding()),
        Some("br")
    );
    assert!(Decoder::for_encoding("").is_some_and(|d| d.is_identity()));
    assert!(Decoder::for_encoding("Identity").is_some_and(|d| d.is_identity()));
}

#[test]
fn unknown_and_stacked_encodings_are_unsupported() {
    for name in [
        "compress",
        "x-compress",
        "snappy",
        "gzip, br",
        "deflate,gzip",
        "gzip;q=1",
        "dcb",
    ] {
        assert!(Decoder::for_encoding(name).is_none(), "{name}");
    }
}

/// A sink that keeps only the size of what it gets.
#[derive(Default)]
struct Sizes {
    total: u64,
    largest_piece: usize,
}

impl Write for Sizes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.total += buf.len() as u64;
        self.largest_piece = self.largest_piece.max(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_bomb_decodes_whole_in_bounded_pieces_without_a_default_limit() {
    // 80 MiB of zeros as one gzip member of 1 MiB repeated, 16 MiB as one
    // deflate, brotli and zstd stream each. Each is written in a single
    // call, the worst case: the sink still gets pieces of at most 128 KiB.
    let zeros = vec![0u8; 16 << 20];
    let member = gzip(&zeros[..1 << 20]);
    let gzip_bomb: Vec<u8> = member
        .iter()
        .copied()
        .cycle()
        .take(member.len() * 80)
        .collect();
    for (encoding, encoded, size) in [
        ("gzip", gzip_bomb, 80 << 20),
        ("deflate", zlib(&zeros), 16 << 20),
        ("br", brotli(&zeros), 16 << 20),
        ("zstd", zstd(&zeros), 16 << 20),
    ] {
        let mut decoder = Decoder::with_sink(encoding, Sizes::default(), u64::MAX)
            .unwrap_or_else(|_| panic!("{encoding}"));
        assert_eq!(decoder.write(&encoded), Ok(()), "{encoding}");
        let sizes = decoder.sink_mut().unwrap();
        assert_eq!(sizes.total, size, "{encoding}");
        assert!(
            sizes.largest_piece <= 128 << 10,
            "{encoding}: {}",
            sizes.largest_piece
        );
    }
}

#[test]
fn for_encoding_has_no_limit() {
    let zeros = vec![0u8; 70 << 20];
    let mut decoder = Decoder::for_encoding("gzip").unwrap();
    let mut total = 0u64;
    for chunk in gzip(&zeros).chunks(16 * 1024) {
        total += decoder.feed(chunk).unwrap().len() as u64;
    }
    assert_eq!(total, 70 << 20);
}

#[test]
fn bombs_in_every_encoding_stop_at_the_limit() {
    let zeros = vec![0u8; 4 << 20];
    let limit = 1 << 20;
    for (encoding, encoded) in [
        ("gzip", gzip(&zeros)),
        ("deflate", zlib(&zeros)),
        ("deflate", raw_deflate(&zeros)),
        ("br", brotli(&zeros)),
        ("zstd", zstd(&zeros)),
    ] {
        // The whole bomb in one call must not decode past the limit either.
        let mut decoder = Decoder::for_encoding_with_limit(encoding, limit).unwrap();
        assert_eq!(
            decoder.feed(&encoded),
            Err(DecodeError::TooLarge { limit }),
            "{encoding}"
        );
        assert_eq!(
            decode_in_pieces(encoding, &encoded, 100, limit),
            Err(DecodeError::TooLarge { limit }),
            "{encoding} in pieces"
        );
    }
}

#[test]
fn identity_is_not_limited() {
    let mut decoder = Decoder::for_encoding_with_limit("identity", 1).unwrap();
    assert_eq!(decoder.feed(b"hello").as_deref(), Ok(&b"hello"[..]));
}

#[test]
fn garbage_is_corrupt_not_a_panic() {
    let garbage = b"this is certainly not compressed data, not at all!!".repeat(4);
    for encoding in ["gzip", "deflate", "br", "zstd"] {
        let mut decoder = Decoder::for_encoding(encoding).unwrap();
        let result = decoder.feed(&garbage);
        assert_eq!(result, Err(DecodeError::Corrupt { encoding }), "{encoding}");
    }
}

#[test]
fn a_large_window_brotli_stream_is_corrupt_whole_or_in_bytes() {
    // Found by the usage_json fuzz target: a 7-byte stream whose header asks
    // for "large window brotli", on which brotli_decompressor allocated a
    // 1 GiB window (fuzz/artifacts-found/usage_json).
    let stream = [0x11, 0x1e, 0x11, 0x00, 0x04, 0xd5, 0xf8];
    let corrupt = Err(DecodeError::Corrupt { encoding: "br" });
    let mut whole = Decoder::for_encoding("br").unwrap();
    assert_eq!(whole.feed(&stream), corrupt);
    let mut bytes = Decoder::for_encoding("br").unwrap();
    assert_eq!(bytes.feed(&[]), Ok(Vec::new()), "no byte, no verdict");
    assert_eq!(bytes.feed(&stream[..1]), corrupt);
    assert_eq!(bytes.feed(&stream[1..]), corrupt);
}

#[test]
fn brotli_streams_of_every_rfc_window_size_decode() {
    let text = lines(2000);
    for lgwin in 10..=24 {
        let mut stream = Vec::new();
        {
            let mut e = brotli::CompressorWriter::new(&mut stream, 4096, 5, lgwin);
            e.write_all(&text).unwrap();
        }
        let mut decoder = Decoder::for_encoding("br").unwrap();
        assert_eq!(decoder.feed(&stream).unwrap(), text, "lgwin {lgwin}");
    }
}

#[test]
fn trailing_bytes_after_the_stream_are_ignored() {
    let text = text();
    let mut decoder = Decoder::for_encoding("br").unwrap();
    let mut br = brotli(&text);
    br.extend_from_slice(b"junk");
    assert_eq!(decoder.feed(&br).as_deref(), Ok(&text[..]));
    let mut decoder = Decoder::for_encoding("gzip").unwrap();
    let mut gz = gzip(&text);
    gz.extend_from_slice(b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    let decoded = decoder.feed(&gz);
    // A gzip member followed by zeros is either ignored or reported corrupt,
    // never a panic; the text itself is decoded first.
    if let Ok(decoded) = decoded {
        assert_eq!(decoded, text);
    }
}

#[test]
fn truncated_stream_gives_a_prefix_without_error() {
    let text = text();
    for (encoding, encoded) in [
        ("gzip", gzip(&text)),
        ("br", brotli(&text)),
        ("zstd", zstd(&text)),
    ] {
        let cut = &encoded[..encoded.len() * 2 / 3];
        let decoded = decode_in_pieces(encoding, cut, 10, u64::MAX).unwrap();
        assert!(text.starts_with(&decoded), "{encoding}");
        assert!(decoded.len() < text.len(), "{encoding}");
    }
}

#[test]
fn zstd_frame_asking_for_a_huge_window_is_refused() {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder
        .set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
        .unwrap();
    encoder.write_all(&text()).unwrap();
    let encoded = encoder.finish().unwrap();
    let mut decoder = Decoder::for_encoding("zstd").unwrap();
    assert_eq!(
        decoder.feed(&encoded),
        Err(DecodeError::Corrupt { encoding: "zstd" })
    );
}
