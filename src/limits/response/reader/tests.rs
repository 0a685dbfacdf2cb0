//! One response body through its reader: encodings, stripping, failures.

use std::io::Write;

use super::*;
use crate::limits::response::Reported;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn through(reader: &mut BodyReader, body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(piece) {
        out.extend_from_slice(&reader.chunk(Bytes::copy_from_slice(chunk)));
    }
    out
}

fn plain(input: u64, output: u64) -> Option<Reported> {
    Some(Reported {
        input,
        output,
        ..Reported::default()
    })
}

#[test]
fn a_gzip_json_answer_decoding_past_64_mib_is_read_and_passed_as_it_came() {
    let text = "a".repeat(70 << 20);
    let body = format!(
        r#"{{"model":"m","choices":[{{"message":{{"content":"{text}"}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":4}}}}"#
    );
    let encoded = gzip(body.as_bytes());
    let (mut reader, change) =
        BodyReader::for_response(b"application/json", Some("gzip"), false).unwrap();
    assert_eq!(change, HeaderChange::default());
    let out = through(&mut reader, &encoded, 16 * 1024 + 3);
    assert!(out == encoded, "the client gets the upstream's bytes");
    let (tail, seen) = reader.end();
    assert!(tail.is_empty());
    assert_eq!(seen.reported, plain(3, 4));
    assert_eq!(seen.generated_bytes, text.len() as u64);
}

#[test]
fn a_gzip_stream_decoding_past_64_mib_is_read_whether_stripped_or_not() {
    let mut stream = Vec::new();
    let chunk = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}],\"usage\":null}}\n\n",
        "b".repeat(1 << 20)
    );
    for _ in 0..70 {
        stream.extend_from_slice(chunk.as_bytes());
    }
    stream.extend_from_slice(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\ndata: [DONE]\n\n",
    );
    let encoded = gzip(&stream);
    for strip in [false, true] {
        let (mut reader, change) =
            BodyReader::for_response(b"text/event-stream; charset=utf-8", Some("gzip"), strip)
                .unwrap();
        assert_eq!(change.remove_content_encoding, strip);
        assert_eq!(change.remove_content_length, strip);
        let mut out = through(&mut reader, &encoded, 32 * 1024);
        let (tail, seen) = reader.end();
        out.extend_from_slice(&tail);
        assert_eq!(seen.reported, plain(5, 6));
        assert_eq!(seen.generated_bytes, 70 << 20);
        if strip {
            // Forwarded decoded; big events keep their `"usage":null`, the
            // usage-only chunk is gone.
            assert_eq!(out.len(), chunk.len() * 70 + b"data: [DONE]\n\n".len());
            assert!(out.ends_with(b"\"usage\":null}\n\ndata: [DONE]\n\n"));
        } else {
            assert!(out == encoded);
        }
    }
}

#[test]
fn stripping_forwards_each_byte_once_in_order_however_chunks_fall() {
    // A piece that releases a held event and holds a new one, with the
    // same length as the piece: the client must get the released bytes.
    let (mut reader, _) = BodyReader::for_response(b"text/event-stream", None, true).unwrap();
    let mut out = Vec::new();
    for piece in [&b"ab"[..], b"\n\ncd", b"\n\n"] {
        out.extend_from_slice(&reader.chunk(Bytes::copy_from_slice(piece)));
    }
    out.extend_from_slice(&reader.end().0);
    assert_eq!(out, b"ab\n\ncd\n\n");
}

#[test]
fn an_identity_stream_that_is_not_stripped_is_passed_without_copying() {
    let (mut reader, change) = BodyReader::for_response(b"text/event-stream", None, false).unwrap();
    assert_eq!(change, HeaderChange::default());
    let chunk = Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n");
    let out = reader.chunk(chunk.clone());
    assert_eq!(out.as_ptr(), chunk.as_ptr());
    assert_eq!(reader.end().1.reported, plain(1, 0));
}

#[test]
fn other_content_types_and_unknown_encodings_are_not_read() {
    assert!(BodyReader::for_response(b"text/plain", None, false).is_none());
    assert!(BodyReader::for_response(b"application/json", Some("compress"), false).is_none());
    assert!(BodyReader::for_response(b"application/json", Some("gzip, br"), false).is_none());
    assert!(BodyReader::for_response(b"Application/JSON", Some("identity"), false).is_some());
}

#[test]
fn a_corrupt_body_stops_reading_and_a_decoded_stream_stops_forwarding() {
    let garbage = Bytes::from_static(b"certainly not gzip, not at all, no no no");
    let (mut reader, _) =
        BodyReader::for_response(b"application/json", Some("gzip"), false).unwrap();
    assert_eq!(reader.chunk(garbage.clone()), garbage);
    assert_eq!(reader.end().1, Observed::default());
    // Stripping a compressed stream: the text before the corruption is
    // counted; nothing after it goes out (the header says identity).
    let good = gzip(b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n");
    let (mut reader, _) =
        BodyReader::for_response(b"text/event-stream", Some("gzip"), true).unwrap();
    let first = reader.chunk(Bytes::from(good[..good.len() - 8].to_vec()));
    assert!(first.starts_with(b"data: "));
    let mut corrupt = good[good.len() - 8..].to_vec();
    corrupt[0] ^= 0xff;
    corrupt.extend_from_slice(&garbage);
    let second = reader.chunk(Bytes::from(corrupt));
    let third = reader.chunk(garbage.clone());
    assert!(third.is_empty());
    let (tail, seen) = reader.end();
    let _ = (second, tail);
    assert_eq!(seen.generated_bytes, 8);
}
