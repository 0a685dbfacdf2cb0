//! Streaming `Content-Encoding` decoders (gzip, deflate, br, zstd), so usage
//! can be read whatever encoding the upstream chose.
//!
//! Decoded bytes are handed to a sink (any [`Write`]) as the decoder makes
//! them, in pieces of at most a few tens of KiB: a body of any decoded size,
//! a decompression bomb included, is read without ever being held. A total
//! limit is optional ([`Decoder::for_encoding_with_limit`]).

use std::io::{self, Write};

use brotli_decompressor::DecompressorWriter;
use flate2::write::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

/// zstd frames may ask for windows up to 2^`ZSTD_WINDOW_LOG_MAX` bytes; larger
/// ones are refused rather than allocated (RFC 8878 recommends 8 MiB for HTTP).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body decodes to more than the limit the decoder was given.
    #[error("the body decodes to more than {limit} bytes")]
    TooLarge {
        /// The limit that was passed.
        limit: u64,
    },
    /// The bytes are not valid in their encoding (or the sink refused them).
    #[error("the body is not valid {encoding}")]
    Corrupt {
        /// The encoding, as named in `Content-Encoding`.
        encoding: &'static str,
    },
}

/// Decodes one response body fed in pieces, writing what it decodes to its
/// sink `W` as it goes ([`Collect`] by default, which keeps it for
/// [`feed`](Decoder::feed) to return).
///
/// After an error every later call returns the same error.
pub struct Decoder<W: Write = Collect> {
    codec: Codec<W>,
    encoding: &'static str,
    limit: u64,
    failed: Option<DecodeError>,
}

enum Codec<W: Write> {
    Identity(W),
    Gzip(MultiGzDecoder<Limited<W>>),
    /// `deflate` before its first two bytes tell zlib-wrapped from raw.
    DeflateSniff(Vec<u8>, Limited<W>),
    Zlib(ZlibDecoder<Limited<W>>),
    RawDeflate(DeflateDecoder<Limited<W>>),
    /// The decoder, and whether the stream's first byte was seen (and is
    /// not a large-window header).
    Brotli(Box<DecompressorWriter<Limited<W>>>, bool),
    Zstd(zstd::stream::write::Decoder<'static, Limited<W>>),
    /// Only while `deflate` changes from sniffing to decoding.
    Switching,
}

impl<W: Write> std::fmt::Debug for Decoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("encoding", &self.encoding)
            .field("limit", &self.limit)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The default sink: keeps what was decoded until [`Decoder::feed`] takes it.
#[derive(Debug, Default)]
pub struct Collect(Vec<u8>);

impl Write for Collect {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Decoder<Collect> {
    /// A decoder for a `Content-Encoding` header value, without a limit on
    /// the decoded size. `None` for an encoding it does not know, and for a
    /// list of several encodings: the caller then estimates usage.
    pub fn for_encoding(content_encoding: &str) -> Option<Decoder> {
        Decoder::with_sink(content_encoding, Collect::default(), u64::MAX).ok()
    }

    /// As [`for_encoding`](Decoder::for_encoding), producing at most `limit`
    /// decoded bytes. `identity` is passed through and not limited.
    pub fn for_encoding_with_limit(content_encoding: &str, limit: u64) -> Option<Decoder> {
        Decoder::with_sink(content_encoding, Collect::default(), limit).ok()
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
        let result = self.write(input);
        let taken = self.sink_mut().map(|c| std::mem::take(&mut c.0));
        result.map(|()| taken.unwrap_or_default())
    }
}

impl<W: Write> Decoder<W> {
    /// A decoder for a `Content-Encoding` header value that writes to `sink`
    /// at most `limit` decoded bytes (`u64::MAX`: no limit). For an encoding
    /// it does not know, and for a list of several, the sink comes back.
    pub fn with_sink(content_encoding: &str, sink: W, limit: u64) -> Result<Decoder<W>, W> {
        let name = content_encoding.trim();
        let limited = |sink| Limited::new(sink, limit);
        let (encoding, codec) = if is_identity_encoding(name) {
            ("identity", Codec::Identity(sink))
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            ("gzip", Codec::Gzip(MultiGzDecoder::new(limited(sink))))
        } else if name.eq_ignore_ascii_case("deflate") {
            (
                "deflate",
                Codec::DeflateSniff(Vec::with_capacity(2), limited(sink)),
            )
        } else if name.eq_ignore_ascii_case("br") {
            let writer = DecompressorWriter::new(limited(sink), 4096);
            ("br", Codec::Brotli(Box::new(writer), false))
        } else if name.eq_ignore_ascii_case("zstd") {
            ("zstd", Codec::Zstd(zstd_decoder(limited(sink))?))
        } else {
            return Err(sink);
        };
        Ok(Decoder {
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

    /// `true` when the body is not encoded and decoding only copies.
    pub fn is_identity(&self) -> bool {
        matches!(self.codec, Codec::Identity(_))
    }

    /// The sink.
    pub fn sink_mut(&mut self) -> Option<&mut W> {
        Some(match &mut self.codec {
            Codec::Identity(sink) => sink,
            Codec::Gzip(writer) => &mut writer.get_mut().inner,
            Codec::DeflateSniff(_, sink) => &mut sink.inner,
            Codec::Zlib(writer) => &mut writer.get_mut().inner,
            Codec::RawDeflate(writer) => &mut writer.get_mut().inner,
            Codec::Brotli(writer, _) => &mut writer.get_mut().inner,
            Codec::Zstd(writer) => &mut writer.get_mut().inner,
            Codec::Switching => return None,
        })
    }

    /// Decodes the next piece of the body into the sink: every byte it
    /// makes decodable reaches the sink before this returns. Bytes after
    /// the end of a compressed stream are ignored.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TooLarge`] once more than the limit would be produced;
    /// [`DecodeError::Corrupt`] when the input is invalid in its encoding or
    /// the sink fails.
    pub fn write(&mut self, input: &[u8]) -> Result<(), DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.decode(input);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn decode(&mut self, input: &[u8]) -> Result<(), DecodeError> {
        let (encoding, limit) = (self.encoding, self.limit);
        let fail = |sink: &Limited<W>| {
            if sink.over {
                DecodeError::TooLarge { limit }
            } else {
                DecodeError::Corrupt { encoding }
            }
        };
        match &mut self.codec {
            Codec::Identity(sink) => sink
                .write_all(input)
                .map_err(|_| DecodeError::Corrupt { encoding }),
            Codec::Gzip(writer) => push(writer, input).map_err(|_| fail(writer.get_ref())),
            Codec::Zlib(writer) => push(writer, input).map_err(|_| fail(writer.get_ref())),
            Codec::RawDeflate(writer) => push(writer, input).map_err(|_| fail(writer.get_ref())),
            Codec::Brotli(writer, started) => {
                if !*started {
                    if let Some(&first) = input.first() {
                        if is_large_window_brotli(first) {
                            return Err(DecodeError::Corrupt { encoding });
                        }
                        *started = true;
                    }
                }
                push(writer.as_mut(), input).map_err(|_| fail(writer.get_ref()))
            }
            Codec::Zstd(writer) => push(writer, input).map_err(|_| fail(writer.get_ref())),
            Codec::DeflateSniff(head, _) => {
                head.extend_from_slice(input);
                if head.len() < 2 {
                    return Ok(());
                }
                let Codec::DeflateSniff(head, sink) =
                    std::mem::replace(&mut self.codec, Codec::Switching)
                else {
                    return Err(DecodeError::Corrupt { encoding });
                };
                self.codec = if is_zlib_header(head[0], head[1]) {
                    Codec::Zlib(ZlibDecoder::new(sink))
                } else {
                    // Some servers send raw deflate under `deflate` (RFC 9110
                    // says zlib); accept both.
                    Codec::RawDeflate(DeflateDecoder::new(sink))
                };
                self.decode(&head)
            }
            Codec::Switching => Err(DecodeError::Corrupt { encoding }),
        }
    }
}

/// Whether a `Content-Encoding` value means the body is not encoded.
pub fn is_identity_encoding(content_encoding: &str) -> bool {
    let name = content_encoding.trim();
    name.is_empty() || name.eq_ignore_ascii_case("identity")
}

fn zstd_decoder<W: Write>(
    sink: Limited<W>,
) -> Result<zstd::stream::write::Decoder<'static, Limited<W>>, W> {
    let raw = zstd::stream::raw::Decoder::new().and_then(|mut raw| {
        raw.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
            ZSTD_WINDOW_LOG_MAX,
        ))
        .map(|()| raw)
    });
    match raw {
        Ok(raw) => Ok(zstd::stream::write::Decoder::with_decoder(sink, raw)),
        Err(_) => Err(sink.inner),
    }
}

/// Whether a brotli stream's first byte announces "large window brotli"
/// (WBITS bits `1`, `000`, `001`, read from the low bit up: the low seven
/// bits are `0x11`), an extension outside RFC 7932 whose window may be
/// 1 GiB. `brotli_decompressor`'s writer accepts it and allocates the whole
/// window at once, so such a stream is refused as corrupt, as a decoder of
/// the RFC does (RFC 7932 windows are at most 16 MiB).
fn is_large_window_brotli(first: u8) -> bool {
    first & 0x7f == 0x11
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

/// Passes decoded bytes on to the sink; refuses to pass more than its limit.
struct Limited<W> {
    inner: W,
    room: u64,
    over: bool,
}

impl<W> Limited<W> {
    fn new(inner: W, limit: u64) -> Self {
        Limited {
            inner,
            room: limit,
            over: false,
        }
    }
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() as u64;
        if len > self.room {
            self.over = true;
            return Err(io::Error::other("decoded size limit"));
        }
        self.room -= len;
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
