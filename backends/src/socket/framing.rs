//! QEMU's stream framing (`-netdev stream`, `-netdev socket,listen=/connect=`): every
//! frame is a 4-byte big-endian length followed by that many bytes, back to back. The
//! receive side is a [`Reassembler`]: the socket reads into its free room, and whole
//! frames are cut out of what it holds as views, without copying; the send side appends
//! frames with their prefixes to a buffer ([`push_frame`]).
//!
//! ```text
//!  buf: [ cut already | buffered: prefix frame prefix fr.. | room: the next read ]
//!       0             start                                end                 len
//!  room() first moves the buffered bytes to the front (at most one partial frame)
//! ```
//!
//! A length of 0 or over the switch's largest frame is one frame skipped ([`Cut::Skipped`]:
//! its length is known, so the stream stays in step); a length over
//! [`MAX_STREAM_FRAME`] cannot be a frame at all ([`OutOfStep`]): only a new connection
//! can bring the stream back. The buffer holds a whole frame and a read chunk, so a
//! reader that waits for the rest of a frame always has room to read it into.

use switch::DropReason;

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

/// Longest length prefix that can still be a frame (64 KiB and a header, as QEMU's
/// frames go up to 65535 bytes plus a virtio-net header): beyond it the stream is lost.
pub const MAX_STREAM_FRAME: usize = 65536 + 64;

/// What was cut from the front of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut<'a> {
    /// A whole frame.
    Frame(&'a [u8]),
    /// A frame the switch does not carry, skipped (what is left of it is skipped as it
    /// arrives): `undersize` (length 0) or `oversize`.
    Skipped(DropReason),
}

/// A length prefix that cannot be a frame: the stream is out of step. Everything
/// buffered has been discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfStep;

/// The receive buffer of one stream connection.
#[derive(Debug)]
pub struct Reassembler {
    buf: Box<[u8]>,
    /// First byte not yet cut.
    start: usize,
    /// End of the bytes received.
    end: usize,
    /// Bytes of a skipped frame still to come.
    skip: usize,
    max_frame: usize,
}

impl Reassembler {
    /// A buffer for frames of at most `max_frame` bytes, with room to read `chunk`
    /// bytes (at least 1) on top of one whole frame.
    pub fn new(max_frame: usize, chunk: usize) -> Reassembler {
        Reassembler {
            buf: vec![0u8; chunk.max(1) + PREFIX + max_frame].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
            max_frame,
        }
    }

    /// Where the next read goes: the buffered bytes are moved to the front first. Never
    /// empty once [`Reassembler::next`] has returned `None` (what is left then is less
    /// than a frame); it can be while whole frames wait to be cut. The caller must not
    /// call it while a read into the room is in flight.
    pub fn room(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Reassembler::room`] (more than it had is taken as all
    /// of it).
    pub fn received(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received and not yet cut.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Forgets everything (the connection is gone).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.skip = 0;
    }

    /// Cuts the next frame; `None` until more bytes arrive.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Cut<'_>, OutOfStep>> {
        if self.skip > 0 {
            let n = self.skip.min(self.end - self.start);
            self.skip -= n;
            self.start += n;
            if self.skip > 0 {
                return None;
            }
        }
        let have = self.end - self.start;
        if have < PREFIX {
            return None;
        }
        let p = &self.buf[self.start..self.start + PREFIX];
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if len > MAX_STREAM_FRAME {
            self.clear();
            return Some(Err(OutOfStep));
        }
        if len == 0 || len > self.max_frame {
            let why = if len == 0 {
                DropReason::Undersize
            } else {
                DropReason::Oversize
            };
            if have - PREFIX >= len {
                self.start += PREFIX + len;
            } else {
                self.skip = len - (have - PREFIX);
                self.start = self.end;
            }
            return Some(Ok(Cut::Skipped(why)));
        }
        if have < PREFIX + len {
            return None;
        }
        let at = self.start + PREFIX;
        self.start = at + len;
        Some(Ok(Cut::Frame(&self.buf[at..at + len])))
    }
}

/// Appends `frame` with its length prefix to `out` (the send side).
pub fn push_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` `step` bytes at a time; every cut, frames as vectors.
    fn cuts(
        max: usize,
        stream: &[u8],
        step: usize,
    ) -> Vec<Result<Result<Vec<u8>, DropReason>, OutOfStep>> {
        let mut r = Reassembler::new(max, 16);
        let mut out = Vec::new();
        let mut fed = 0;
        while fed < stream.len() {
            let room = r.room();
            let n = step.min(room.len()).min(stream.len() - fed);
            room[..n].copy_from_slice(&stream[fed..fed + n]);
            r.received(n);
            fed += n;
            while let Some(c) = r.next() {
                out.push(c.map(|c| match c {
                    Cut::Frame(f) => Ok(f.to_vec()),
                    Cut::Skipped(why) => Err(why),
                }));
            }
        }
        out
    }

    #[test]
    fn frames_are_cut_however_the_bytes_arrive() {
        let mut s = Vec::new();
        push_frame(&mut s, &[1u8; 60]);
        push_frame(&mut s, &[2u8; 64]);
        push_frame(&mut s, &[3u8; 1]);
        for step in [1, 3, 4, 5, 64, 1000] {
            assert_eq!(
                cuts(64, &s, step),
                vec![
                    Ok(Ok(vec![1u8; 60])),
                    Ok(Ok(vec![2u8; 64])),
                    Ok(Ok(vec![3u8]))
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_frame_it_does_not_carry_is_skipped_and_the_stream_kept() {
        let mut s = Vec::new();
        push_frame(&mut s, &[]);
        push_frame(&mut s, &[9u8; 65]);
        push_frame(&mut s, &[4u8; 20]);
        for step in [1, 7, 100] {
            assert_eq!(
                cuts(64, &s, step),
                vec![
                    Ok(Err(DropReason::Undersize)),
                    Ok(Err(DropReason::Oversize)),
                    Ok(Ok(vec![4u8; 20]))
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_length_that_cannot_be_a_frame_is_out_of_step() {
        let mut s = (MAX_STREAM_FRAME as u32 + 1).to_be_bytes().to_vec();
        s.extend_from_slice(&[0u8; 10]);
        assert_eq!(cuts(1518, &s, 100), vec![Err(OutOfStep)]);
        // The longest that can be a frame is only skipped.
        let mut s = (MAX_STREAM_FRAME as u32).to_be_bytes().to_vec();
        s.extend_from_slice(&[0u8; 10]);
        assert_eq!(cuts(1518, &s, 100), vec![Ok(Err(DropReason::Oversize))]);
    }

    #[test]
    fn a_partial_frame_always_leaves_room_to_read_its_rest() {
        let mut r = Reassembler::new(64, 1);
        let mut s = Vec::new();
        push_frame(&mut s, &[5u8; 64]);
        let room = r.room();
        room[..5].copy_from_slice(&s[..5]);
        r.received(5);
        assert_eq!(r.next(), None);
        assert_eq!(r.buffered(), 5);
        let room = r.room();
        assert_eq!(room.len(), 1 + PREFIX + 64 - 5);
        room[..63].copy_from_slice(&s[5..]);
        r.received(63);
        assert_eq!(r.next(), Some(Ok(Cut::Frame(&[5u8; 64][..]))));
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.room().len(), 1 + PREFIX + 64);
    }
}
