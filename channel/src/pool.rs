//! The payload pool: fixed-size buffers in the requester's part of the region.
//!
//! Buffer `i` belongs to request-database entry `i` (see [`db`](crate::db)): the requester
//! writes the payload, the message carries `(offset in buffer, length)`, the replier reads it
//! and may write its answer into the same buffer, and the buffer goes back with the reply.
//! Offsets and lengths in messages are relative to the buffer, so checking them is one
//! comparison against the buffer size, done before any byte is touched.

use crate::error::Corruption;

/// Where a side's pool is and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    base: usize,
    buf_size: u32,
    count: u32,
}

impl Pool {
    /// The pool at region offset `base` with `count` buffers of `buf_size` bytes.
    pub fn new(base: usize, buf_size: u32, count: u32) -> Pool {
        Pool {
            base,
            buf_size,
            count,
        }
    }

    /// Bytes in one buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Region offset of bytes `off..off + len` of buffer `index`, if that span lies inside
    /// the buffer.
    #[inline]
    pub fn span(&self, index: u32, off: u32, len: u32) -> Result<usize, Corruption> {
        let end = off.checked_add(len).ok_or(Corruption::PayloadBounds)?;
        if index >= self.count || end > self.buf_size {
            return Err(Corruption::PayloadBounds);
        }
        Ok(self.base + index as usize * self.buf_size as usize + off as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_inside_a_buffer_are_accepted() {
        let p = Pool::new(4096, 2048, 4);
        assert_eq!(p.span(0, 0, 2048), Ok(4096));
        assert_eq!(p.span(3, 2000, 48), Ok(4096 + 3 * 2048 + 2000));
        assert_eq!(p.span(1, 2048, 0), Ok(4096 + 2048 + 2048));
    }

    #[test]
    fn spans_crossing_a_buffer_or_the_pool_are_rejected() {
        let p = Pool::new(4096, 2048, 4);
        assert_eq!(p.span(0, 1, 2048), Err(Corruption::PayloadBounds));
        assert_eq!(p.span(4, 0, 1), Err(Corruption::PayloadBounds));
        assert_eq!(p.span(0, u32::MAX, 2), Err(Corruption::PayloadBounds));
    }
}
