//! One response body on its way to the client: picks the reader (JSON or
//! event stream) and the decoder its headers call for, feeds every chunk
//! through them, and tells what the client receives and what was observed.

use std::io::{self, Write};

use bytes::Bytes;

use super::decode::{is_identity_encoding, Decoder};
use super::{JsonTap, Observed, SseTap};

/// When a stripped stream arrives compressed it is forwarded decoded; one
/// upstream chunk may decode to at most this much (beyond it the stream is a
/// decompression bomb: reading and forwarding stop).
pub const FORWARD_DECODED_CAP: usize = 16 << 20;

/// What the response header must lose before it goes to the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderChange {
    /// The body is forwarded decoded.
    pub remove_content_encoding: bool,
    /// The body's length changes (a stripped stream).
    pub remove_content_length: bool,
}

/// Reads the usage of one response body as it passes. See the module
/// documentation.
#[derive(Debug)]
pub struct BodyReader {
    path: Path,
    /// Decoded bytes are what the client gets (a compressed stream that is
    /// being stripped).
    forward_decoded: bool,
    /// Decoding failed: nothing more is read (or, forwarding decoded, sent).
    failed: bool,
}

#[derive(Debug)]
enum Path {
    /// Not encoded: the reader takes the chunks as they are.
    Plain(Consumer),
    /// Encoded: the decoder hands the reader what it decodes.
    Decoded(Box<Decoder<Consumer>>),
}

/// The usage reader, fed decoded bytes.
#[derive(Debug)]
struct Consumer {
    reader: Reader,
    /// Forwarding decoded: what the client gets, collected per chunk.
    out: Vec<u8>,
    forward: bool,
}

#[derive(Debug)]
enum Reader {
    Json(Box<JsonTap>),
    Sse(Box<SseTap>),
}

impl Write for Consumer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.reader {
            Reader::Json(json) => json.feed(buf),
            Reader::Sse(sse) if self.forward => {
                sse.feed(buf, &mut self.out);
                if self.out.len() > FORWARD_DECODED_CAP {
                    return Err(io::Error::other("one chunk decodes to too much"));
                }
            }
            Reader::Sse(sse) => sse.observe(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BodyReader {
    /// A reader for a response with these `Content-Type` and
    /// `Content-Encoding` values; `strip` when the proxy injected
    /// `stream_options.include_usage`. `None` when the body is neither JSON
    /// nor an event stream, or its encoding is unknown: it then passes
    /// untouched and is estimated.
    pub fn for_response(
        content_type: &[u8],
        content_encoding: Option<&str>,
        strip: bool,
    ) -> Option<(BodyReader, HeaderChange)> {
        // Compared in place, without a lower-cased copy.
        let starts = |prefix: &[u8]| {
            content_type
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        };
        let sse = starts(b"text/event-stream");
        let json = starts(b"application/json");
        if !sse && !json {
            return None;
        }
        let strip = sse && strip;
        let reader = if sse {
            Reader::Sse(Box::new(SseTap::new(strip)))
        } else {
            Reader::Json(Box::default())
        };
        let consumer = Consumer {
            reader,
            out: Vec::new(),
            forward: strip,
        };
        let encoding = content_encoding.unwrap_or("identity");
        let mut change = HeaderChange::default();
        let path = if is_identity_encoding(encoding) {
            Path::Plain(consumer)
        } else {
            let decoder = Decoder::with_sink(encoding, consumer, u64::MAX).ok()?;
            change.remove_content_encoding = strip;
            Path::Decoded(Box::new(decoder))
        };
        change.remove_content_length = strip;
        let forward_decoded = change.remove_content_encoding;
        Some((
            BodyReader {
                path,
                forward_decoded,
                failed: false,
            },
            change,
        ))
    }

    /// One chunk from the upstream; returns what the client gets.
    pub fn chunk(&mut self, chunk: Bytes) -> Bytes {
        if self.failed {
            return if self.forward_decoded {
                Bytes::new()
            } else {
                chunk
            };
        }
        match &mut self.path {
            Path::Plain(consumer) => match &mut consumer.reader {
                Reader::Json(json) => {
                    json.feed(&chunk);
                    chunk
                }
                Reader::Sse(sse) if consumer.forward => {
                    let mut out = Vec::with_capacity(chunk.len());
                    sse.feed(&chunk, &mut out);
                    if out == chunk {
                        chunk
                    } else {
                        Bytes::from(out)
                    }
                }
                Reader::Sse(sse) => {
                    sse.observe(&chunk);
                    chunk
                }
            },
            Path::Decoded(decoder) => {
                let result = decoder.write(&chunk);
                let out = decoder
                    .sink_mut()
                    .map(|c| std::mem::take(&mut c.out))
                    .unwrap_or_default();
                if result.is_err() {
                    // Corrupt (or a bomb): stop reading; the usage is estimated.
                    self.failed = true;
                }
                match (self.forward_decoded, result) {
                    (true, Ok(())) => Bytes::from(out),
                    // The header no longer says the body is encoded.
                    (true, Err(_)) => Bytes::new(),
                    (false, _) => chunk,
                }
            }
        }
    }

    /// The end of the body: what is still to be sent to the client, and
    /// what the body revealed.
    pub fn end(&mut self) -> (Bytes, Observed) {
        let forward_decoded = self.forward_decoded;
        let decoded = matches!(self.path, Path::Decoded(_));
        let consumer = match &mut self.path {
            Path::Plain(consumer) => Some(consumer),
            Path::Decoded(decoder) => decoder.sink_mut(),
        };
        let Some(consumer) = consumer else {
            return (Bytes::new(), Observed::default());
        };
        match &mut consumer.reader {
            Reader::Json(json) => (Bytes::new(), json.finish()),
            Reader::Sse(sse) => {
                let mut tail = Vec::new();
                sse.finish(&mut tail);
                // Observed but not forwarded (the client got the encoded
                // bytes), or no longer forwardable.
                if (decoded && !forward_decoded) || (self.failed && forward_decoded) {
                    tail.clear();
                }
                (Bytes::from(tail), sse.observed())
            }
        }
    }
}

#[cfg(test)]
mod tests;
