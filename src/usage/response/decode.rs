//! Streaming `Content-Encoding` decoders (gzip, deflate, br, zstd), so usage
//! can be read whatever encoding the upstream chose, with a cap on the total
//! decoded size against decompression bombs.

use std::io::{self, Write};

use brotli_decompressor::DecompressorWriter;
use flate2::write::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

/// The most a [`Decoder`] produces before it gives up with
/// [`DecodeError::TooLarge`].
pub const DECODED_LIMIT: u64 = 64 << 20;

/// zstd frames may ask for windows up to 2^`ZSTD_WINDOW_LOG_MAX` bytes; larger
/// ones are refused rather than allocated (RFC 8878 recommends 8 MiB for HTTP).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body decodes to more than the limit (a decompression bomb, or just big).
    #[error("the body decodes to more than {limit} bytes")]
    TooLarge {
        /// The limit that was passed.
        limit: u64,
    },
    /// The bytes are not valid in their encoding.
    #[error("the body is not valid {encoding}")]
    Corrupt {
        /// The encoding, as named in `Content-Encoding`.
        encoding: &'static str,
    },
}

/// Decodes one response body fed in pieces.
///
/// After an error every later [`feed`](Decoder::feed) returns the same error.
pub struct Decoder {
    codec: Codec,
    encoding: &'static str,
    limit: u64,
    failed: Option<DecodeError>,
}

enum Codec {
    Identity,
    Gzip(MultiGzDecoder<Sink>),
    /// `deflate` before its first two bytes tell zlib-wrapped from raw.
    DeflateSniff(Vec<u8>),
    Zlib(ZlibDecoder<Sink>),
    RawDeflate(DeflateDecoder<Sink>),
    Brotli(Box<DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("encoding", &self.encoding)
            .field("limit", &self.limit)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder for a `Content-Encoding` header value, with the default
    /// [`DECODED_LIMIT`]. `None` for an encoding it does not know, and for a
    /// list of several encodings: the caller then estimates usage.
    pub fn for_encoding(content_encoding: &str) -> Option<Decoder> {
        Self::for_encoding_with_limit(content_encoding, DECODED_LIMIT)
    }

    /// As [`for_encoding`](Decoder::for_encoding), producing at most `limit`
    /// decoded bytes. `identity` is passed through and not limited.
    pub fn for_encoding_with_limit(content_encoding: &str, limit: u64) -> Option<Decoder> {
        let name = content_encoding.trim();
        let (encoding, codec) = if name.is_empty() || name.eq_ignore_ascii_case("identity") {
            ("identity", Codec::Identity)
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            ("gzip", Codec::Gzip(MultiGzDecoder::new(Sink::new(limit))))
        } else if name.eq_ignore_ascii_case("deflate") {
            ("deflate", Codec::DeflateSniff(Vec::with_capacity(2)))
        } else if name.eq_ignore_ascii_case("br") {
            let writer = DecompressorWriter::new(Sink::new(limit), 4096);
            ("br", Codec::Brotli(Box::new(writer)))
        } else if name.eq_ignore_ascii_case("zstd") {
            ("zstd", Codec::Zstd(zstd_decoder(limit).ok()?))
        } else {
            return None;
        };
        Some(Decoder {
            codec,
            encoding,
            limit,
            failed: None,
        })
    }

    /// The encoding this decoder undoes, lower-case (`x-gzip` is `gzip`).
    pub fn encoding(&self) -> &'static str {
        self.encoding
    }

    /// `true` when the body is not encoded and `feed` only copies.
    pub fn is_identity(&self) -> bool {
        matches!(self.codec, Codec::Identity)
    }

    /// Decodes the next piece of the body and returns every byte it makes
    /// decodable (possibly none). Bytes after the end of a compressed stream
    /// are ignored.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TooLarge`] once more than the limit would be produced;
    /// [`DecodeError::Corrupt`] when the input is invalid in its encoding.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.decode(input);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn decode(&mut self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let (encoding, limit) = (self.encoding, self.limit);
        let fail = |sink: &Sink| {
            if sink.over {
                DecodeError::TooLarge { limit }
            } else {
                DecodeError::Corrupt { encoding }
            }
        };
        match &mut self.codec {
            Codec::Identity => return Ok(input.to_vec()),
            Codec::Gzip(writer) => push(writer, input).map_err(|_| fail(writer.get_ref()))?,
            Codec::Zlib(writer) => push(writer, input).map_err(|_| fail(writer.get_ref()))?,
            Codec::RawDeflate(writer) => push(writer, input).map_err(|_| fail(writer.get_ref()))?,
            Codec::Brotli(writer) => {
                push(writer.as_mut(), input).map_err(|_| fail(writer.get_ref()))?
            }
            Codec::Zstd(writer) => push(writer, input).map_err(|_| fail(writer.get_ref()))?,
            Codec::DeflateSniff(head) => {
                head.extend_from_slice(input);
                if head.len() < 2 {
                    return Ok(Vec::new());
                }
                let head = std::mem::take(head);
                self.codec = if is_zlib_header(head[0], head[1]) {
                    Codec::Zlib(ZlibDecoder::new(Sink::new(limit)))
                } else {
                    // Some servers send raw deflate under `deflate` (RFC 9110
                    // says zlib); accept both.
                    Codec::RawDeflate(DeflateDecoder::new(Sink::new(limit)))
                };
                return self.decode(&head);
            }
        }
        Ok(self.take_output())
    }

    fn take_output(&mut self) -> Vec<u8> {
        let sink = match &mut self.codec {
            Codec::Identity | Codec::DeflateSniff(_) => return Vec::new(),
            Codec::Gzip(writer) => writer.get_mut(),
            Codec::Zlib(writer) => writer.get_mut(),
            Codec::RawDeflate(writer) => writer.get_mut(),
            Codec::Brotli(writer) => writer.get_mut(),
            Codec::Zstd(writer) => writer.get_mut(),
        };
        std::mem::take(&mut sink.decoded)
    }
}

fn zstd_decoder(limit: u64) -> io::Result<zstd::stream::write::Decoder<'static, Sink>> {
    let mut raw = zstd::stream::raw::Decoder::new()?;
    raw.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
        ZSTD_WINDOW_LOG_MAX,
    ))?;
    Ok(zstd::stream::write::Decoder::with_decoder(
        Sink::new(limit),
        raw,
    ))
}

/// A zlib stream starts with CMF (method 8, deflate) and FLG such that the
/// pair, read big-endian, is a multiple of 31 (RFC 1950).
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// Writes all of `input` that belongs to the stream, then flushes so every
/// byte decodable so far reaches the sink.
fn push<W: Write + ?Sized>(writer: &mut W, mut input: &[u8]) -> io::Result<()> {
    while !input.is_empty() {
        let taken = writer.write(input)?;
        if taken == 0 {
            // The compressed stream has ended; the rest is trailing bytes.
            break;
        }
        input = &input[taken..];
    }
    writer.flush()
}

/// Where decoded bytes land; refuses to grow past its limit.
struct Sink {
    decoded: Vec<u8>,
    room: u64,
    over: bool,
}

impl Sink {
    fn new(limit: u64) -> Self {
        Sink {
            decoded: Vec::new(),
            room: limit,
            over: false,
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() as u64;
        if len > self.room {
            self.over = true;
            return Err(io::Error::other("decoded size limit"));
        }
        self.room -= len;
        self.decoded.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
