//! Payloads in place: views of a received payload in the pool, a request built directly in
//! its pool buffer, and a received payload forwarded into another channel with one copy.
//!
//! ```text
//!   channel X (peer's pool)              channel Y (this side's pool)
//!   request payload ── Payload ── forward ── one copy (rep movsb) ──► buffer i ─► request
//!   send_request_with(len, |buf| …)  the closure writes buffer i in place ─► request
//! ```
//!
//! The pool is shared memory that a hostile peer may write at any time, so no `&[u8]` or
//! `&mut [u8]` to it is handed out by safe code: [`Payload`] and [`PayloadMut`] copy bytes
//! in and out (volatile accesses, or `rep movsb` for long copies), always inside the buffer.
//! Their `unsafe` `as_slice` and `as_mut_slice` are for a peer that is trusted not to write
//! the buffer out of turn (or that has the pool mapped read-only).

use core::marker::PhantomData;

use super::{payload, Endpoint, Reply, Request};
use crate::db::RequestId;
use crate::error::{ChannelError, Corruption};
use crate::notify::Notifier;
use crate::pool::Pool;
use crate::region::Region;
use crate::wire::{Words, INLINE_WORDS};

/// A received payload, read in place in its pool buffer: the payload of a [`Request`]
/// ([`Endpoint::request_payload`]) or of a [`Reply`] ([`Endpoint::reply_payload`]). It
/// lives no longer than the message, so it cannot be read after the buffer went back
/// (the reply sent, the reply freed).
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a> {
    region: Region,
    /// Region offset of the payload's first byte.
    off: usize,
    len: usize,
    _message: PhantomData<&'a ()>,
}

impl<'a> Payload<'a> {
    /// The payload from byte `at` on (empty if `at` is past its end): to pass on the
    /// part of a payload that a peer has not taken yet.
    #[inline]
    pub fn tail(&self, at: usize) -> Payload<'a> {
        let at = at.min(self.len);
        Payload {
            region: self.region,
            off: self.off + at,
            len: self.len - at,
            _message: PhantomData,
        }
    }

    /// The payload's first `len` bytes (all of it if it has fewer).
    #[inline]
    pub fn prefix(&self, len: usize) -> Payload<'a> {
        Payload {
            len: len.min(self.len),
            ..*self
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy payload bytes from `at` on into `dst`, as many as fit in both; returns how many.
    /// The peer may change them meanwhile: copy what you parse (headers) to private memory
    /// first and parse the copy.
    #[inline]
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<usize, ChannelError> {
        let n = dst.len().min(self.len.saturating_sub(at));
        if n == 0 {
            return Ok(0);
        }
        self.region
            .read_bytes(self.off + at, &mut dst[..n])
            .ok_or(ChannelError::Corrupt(Corruption::PayloadBounds))?;
        Ok(n)
    }

    /// The payload as a slice, for code that must parse `&[u8]` in place.
    ///
    /// # Safety
    ///
    /// Nobody may write the payload's bytes while the slice is alive: the peer must not
    /// touch the buffer out of turn (it is trusted, or the pool is mapped read-only in its
    /// address space). A hostile peer that writes them anyway would race with this
    /// process's reads through the slice.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // The span was checked against the pool, which lies inside the region, when this
        // was made.
        debug_assert!(self.region.contains(self.off, self.len));
        // SAFETY: `off..off + len` lies inside the region, mapped while it is used (contract
        // of `Region::from_raw`); this process only reads it while the slice lives (this
        // side does not write a buffer it received), and the caller guarantees that no
        // other party writes it either.
        unsafe { core::slice::from_raw_parts(self.region.as_ptr().add(self.off), self.len) }
    }
}

/// A pool buffer being filled in place: the first `capacity()` bytes of the buffer of a
/// request about to be sent ([`Endpoint::send_request_with`]) or of the request being
/// answered ([`Endpoint::reply_with`]). Every access is checked against the capacity.
#[derive(Debug)]
pub struct PayloadMut<'a> {
    region: Region,
    /// Region offset of the buffer's first byte.
    off: usize,
    cap: usize,
    _buffer: PhantomData<&'a mut ()>,
}

impl PayloadMut<'_> {
    /// Bytes that may be written.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Region offset of bytes `at..at + len`, if they lie inside the capacity.
    #[inline(always)]
    fn span(&self, at: usize, len: usize) -> Result<usize, ChannelError> {
        match at.checked_add(len) {
            Some(end) if end <= self.cap => Ok(self.off + at),
            _ => Err(ChannelError::PayloadTooLarge),
        }
    }

    /// Copy `src` to bytes `at..at + src.len()`. Writing past the capacity writes nothing
    /// and fails with [`ChannelError::PayloadTooLarge`].
    #[inline]
    pub fn write(&mut self, at: usize, src: &[u8]) -> Result<(), ChannelError> {
        let off = self.span(at, src.len())?;
        self.region
            .write_bytes(off, src)
            .ok_or(ChannelError::Corrupt(Corruption::PayloadBounds))
    }

    /// Set bytes `at..at + len` to `byte`.
    pub fn fill(&mut self, at: usize, len: usize, byte: u8) -> Result<(), ChannelError> {
        let off = self.span(at, len)?;
        self.region
            .fill(off, len, byte)
            .ok_or(ChannelError::Corrupt(Corruption::PayloadBounds))
    }

    /// Copy all of `src` (a payload received on this or another channel) to bytes
    /// `at..at + src.len()`: one copy, pool to pool. Returns `src.len()`.
    #[inline]
    pub fn copy_from(&mut self, at: usize, src: &Payload<'_>) -> Result<usize, ChannelError> {
        let off = self.span(at, src.len)?;
        self.region
            .copy_from(off, &src.region, src.off, src.len)
            .ok_or(ChannelError::Corrupt(Corruption::PayloadBounds))?;
        Ok(src.len)
    }

    /// Copy bytes from `at` on back out of the buffer into `dst`, as many as fit in both
    /// (within the capacity); returns how many. In a reply these are first the request's
    /// payload, so an answer can be computed in place.
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<usize, ChannelError> {
        let n = dst.len().min(self.cap.saturating_sub(at));
        if n == 0 {
            return Ok(0);
        }
        self.region
            .read_bytes(self.off + at, &mut dst[..n])
            .ok_or(ChannelError::Corrupt(Corruption::PayloadBounds))?;
        Ok(n)
    }

    /// The buffer as a slice, for code that must build into `&mut [u8]` (a network stack's
    /// transmit token).
    ///
    /// # Safety
    ///
    /// Nobody else may write or read the buffer's first `capacity()` bytes while the slice
    /// is alive: the peer must not touch this side's pool buffers out of turn (it is
    /// trusted, or the pool is mapped read-only in its address space). A hostile peer that
    /// writes them anyway would race with this process's accesses through the slice.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // The span was checked against the region when this was made (`capacity` bytes of
        // one pool buffer, which lies inside the region).
        debug_assert!(self.region.contains(self.off, self.cap));
        // SAFETY: `off..off + cap` lies inside the region, mapped for as long as the
        // endpoint is used (contract of `Region::from_raw`), and is this side's buffer,
        // which no other code of this process touches while `self` is borrowed mutably; the
        // caller guarantees that no other party accesses it either.
        unsafe { core::slice::from_raw_parts_mut(self.region.as_ptr().add(self.off), self.cap) }
    }
}

impl<N: Notifier> Endpoint<N> {
    /// The payload of `req`, in place in the peer's pool buffer.
    #[inline]
    pub fn request_payload<'r>(&self, req: &'r Request) -> Result<Payload<'r>, ChannelError> {
        self.payload_in(&self.peer_pool, &req.words)
    }

    /// The payload of `reply`, in place in this side's pool buffer.
    #[inline]
    pub fn reply_payload<'r>(&self, reply: &'r Reply) -> Result<Payload<'r>, ChannelError> {
        self.payload_in(&self.my_pool, &reply.words)
    }

    /// The payload of a validated message whose buffer is in `pool`.
    #[inline(always)]
    fn payload_in<'r>(&self, pool: &Pool, w: &'r Words) -> Result<Payload<'r>, ChannelError> {
        self.check()?;
        let (off, len) = payload(w);
        let at = pool
            .span(RequestId(w[0]).index(), off, len)
            .map_err(ChannelError::Corrupt)?;
        Ok(Payload {
            region: self.region,
            off: at,
            len: len as usize,
            _message: PhantomData,
        })
    }

    /// The first `len` bytes of a pool buffer, or [`ChannelError::PayloadTooLarge`] if a
    /// buffer has fewer.
    #[inline(always)]
    fn checked_len(&self, len: usize) -> Result<u32, ChannelError> {
        u32::try_from(len)
            .ok()
            .filter(|&l| l <= self.my_pool.buf_size())
            .ok_or(ChannelError::PayloadTooLarge)
    }

    /// Send a request whose payload `fill` writes in place into its pool buffer (no copy
    /// through private memory). `fill` gets the buffer's first `len` bytes and returns how
    /// many of them the payload has (at most `len`); the request is sent only then.
    ///
    /// If `fill` fails, or returns more than `len`, nothing is sent, no request stays
    /// allocated, and the error ([`ChannelError::PayloadTooLarge`] for a length over `len`)
    /// is returned. Other errors as for [`send_request`](Self::send_request); when the
    /// peer's queue is [`Full`](ChannelError::Full) the payload is lost with the request.
    pub fn send_request_with<F>(
        &mut self,
        opcode: u16,
        inline: [u64; INLINE_WORDS],
        len: usize,
        fill: F,
    ) -> Result<RequestId, ChannelError>
    where
        F: FnOnce(&mut PayloadMut<'_>) -> Result<usize, ChannelError>,
    {
        self.check()?;
        let cap = self.checked_len(len)?;
        // The buffer `commit_request` will allocate: free, so nobody else uses it.
        let index = self.db.next_free().ok_or(ChannelError::NoFreeRequest)?;
        let r = self.my_pool.span(index, 0, cap);
        let off = self.guard(r)?;
        let n = self.fill_in_place(off, len, fill)?;
        let id = self.commit_request(opcode, inline, n, &[])?;
        debug_assert_eq!(id.index(), index);
        Ok(id)
    }

    /// Lets `fill` write up to `len` bytes of the buffer at `off` (already checked to lie
    /// in this side's region) and returns how many it says it wrote, refused when more
    /// than `len`.
    #[inline]
    fn fill_in_place<F>(&self, off: usize, len: usize, fill: F) -> Result<u32, ChannelError>
    where
        F: FnOnce(&mut PayloadMut<'_>) -> Result<usize, ChannelError>,
    {
        let n = fill(&mut PayloadMut {
            region: self.region,
            off,
            cap: len,
            _buffer: PhantomData,
        })?;
        if n > len {
            return Err(ChannelError::PayloadTooLarge);
        }
        #[allow(clippy::cast_possible_truncation)] // n <= len <= buf_size
        Ok(n as u32)
    }

    /// Send a new request carrying `src`, a payload received on this or another endpoint
    /// (a request to pass on, or a reply's data): one copy, from `src`'s pool buffer into
    /// this request's. Errors as for [`send_request_with`](Self::send_request_with).
    #[inline]
    pub fn forward(
        &mut self,
        opcode: u16,
        inline: [u64; INLINE_WORDS],
        src: &Payload<'_>,
    ) -> Result<RequestId, ChannelError> {
        self.send_request_with(opcode, inline, src.len(), |buf| buf.copy_from(0, src))
    }

    /// Answer `req` with a payload that `fill` writes in place into the request's buffer
    /// (which first holds the request's own payload). `fill` gets the buffer's first `len`
    /// bytes and returns how many the reply's payload has (at most `len`).
    ///
    /// On any error (`len` larger than a buffer, `fill` failing or returning more than `len`,
    /// a one-way `req`) nothing is sent and `req` is consumed unanswered, as with
    /// [`reply`](Self::reply).
    pub fn reply_with<F>(
        &mut self,
        req: Request,
        status: u32,
        inline: [u64; INLINE_WORDS],
        len: usize,
        fill: F,
    ) -> Result<(), ChannelError>
    where
        F: FnOnce(&mut PayloadMut<'_>) -> Result<usize, ChannelError>,
    {
        self.check()?;
        if req.is_oneway() {
            return Err(ChannelError::InvalidHandle);
        }
        let cap = self.checked_len(len)?;
        let off = self
            .peer_pool
            .span(req.id().index(), 0, cap)
            .map_err(|_| ChannelError::PayloadTooLarge)?;
        let n = self.fill_in_place(off, len, fill)?;
        self.push_reply(req, status, inline, n)
    }

    /// Answer `req` with `src`, a payload received on this or another endpoint, copied once
    /// into the request's buffer. Errors as for [`reply_with`](Self::reply_with).
    #[inline]
    pub fn reply_from(
        &mut self,
        req: Request,
        status: u32,
        inline: [u64; INLINE_WORDS],
        src: &Payload<'_>,
    ) -> Result<(), ChannelError> {
        self.reply_with(req, status, inline, src.len(), |buf| buf.copy_from(0, src))
    }
}
