//! Requests the HTTP/2 layer ends before the pipeline sees them, counted.
//!
//! The h2 crate answers some streams by itself and offers no hook: a header
//! list over its limit (twice `limits.max_header_bytes`; smaller oversize
//! heads reach the pipeline and get its own 431) gets a bare `431` HEADERS
//! frame, a stream over the concurrency limit a `RST_STREAM`. No request
//! reaches the service for them, so neither the access log nor the request
//! metrics would know. [`StreamCounter`] reads the frame headers of what the
//! client sends (never a payload) and counts the streams it opens; what the
//! pipeline did not get of those when the connection ends is logged and
//! counted (`portcullis_http2_streams_refused_total`): so probing with
//! oversized header blocks leaves a trace. Streams a client resets before
//! hyper accepts them are counted there too.

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The HEADERS frame type.
const HEADERS: u8 = 0x1;

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Matching the preface; `n` bytes of it seen.
    Preface(usize),
    /// Not HTTP/2 (or done): nothing more is looked at.
    Off,
    /// In frames: `filled` bytes of the next frame header, or `skip` payload
    /// bytes still to pass.
    Frames,
}

/// Counts the streams an HTTP/2 client opens, from its frame headers.
#[derive(Debug)]
pub struct StreamCounter {
    mode: Mode,
    header: [u8; 9],
    filled: usize,
    skip: usize,
    last_stream: u32,
}

impl Default for StreamCounter {
    fn default() -> Self {
        StreamCounter {
            mode: Mode::Preface(0),
            header: [0; 9],
            filled: 0,
            skip: 0,
            last_stream: 0,
        }
    }
}

impl StreamCounter {
    /// Whether there is anything to look at (not an HTTP/1.1 connection).
    pub fn is_on(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Reads what the client sent next; the streams it opened.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut opened = 0;
        while !bytes.is_empty() {
            match self.mode {
                Mode::Off => return opened,
                Mode::Preface(seen) => {
                    let n = bytes.len().min(PREFACE.len() - seen);
                    if bytes[..n] != PREFACE[seen..seen + n] {
                        self.mode = Mode::Off;
                        return opened;
                    }
                    bytes = &bytes[n..];
                    self.mode = if seen + n == PREFACE.len() {
                        Mode::Frames
                    } else {
                        Mode::Preface(seen + n)
                    };
                }
                Mode::Frames if self.skip > 0 => {
                    let n = bytes.len().min(self.skip);
                    self.skip -= n;
                    bytes = &bytes[n..];
                }
                Mode::Frames => {
                    let n = bytes.len().min(9 - self.filled);
                    self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    if self.filled == 9 {
                        self.filled = 0;
                        opened += u64::from(self.frame_header());
                    }
                }
            }
        }
        opened
    }

    /// Takes a frame header in; whether the frame opens a stream.
    fn frame_header(&mut self) -> bool {
        let h = &self.header;
        let length = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        // A request opens a new, odd stream with HEADERS; a later HEADERS on
        // a stream already open is its trailers.
        let opens = h[3] == HEADERS && stream % 2 == 1 && stream > self.last_stream;
        if opens {
            self.last_stream = stream;
        }
        self.skip = length;
        opens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn counts_streams_opened_by_headers_whatever_the_reads() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        wire.extend(frame(HEADERS, 1, &[0x82; 40]));
        wire.extend(frame(0x0, 1, b"body")); // DATA
        wire.extend(frame(HEADERS, 1, &[0x82; 3])); // trailers
        wire.extend(frame(HEADERS, 3, &[0x01, 0x4, 0, 0, 0, 1, 0, 0, 0])); // looks like a frame inside
        wire.extend(frame(0x9, 3, &[0; 70_000 % 16_384])); // CONTINUATION
        wire.extend(frame(HEADERS, 5, &[]));
        for chunk in [1, 2, 7, 9, 100, wire.len()] {
            let mut c = StreamCounter::default();
            let opened: u64 = wire.chunks(chunk).map(|piece| c.feed(piece)).sum();
            assert_eq!(opened, 3, "reads of {chunk}");
        }
    }

    #[test]
    fn http1_is_not_looked_at() {
        let mut c = StreamCounter::default();
        assert_eq!(c.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
        assert_eq!(c.feed(&frame(HEADERS, 1, &[])), 0);
        assert!(!c.is_on());
    }
}
