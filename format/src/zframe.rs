//! Reading one zstd frame with a decompression context kept per thread.
//!
//! The zstd crate's stream decoder makes and frees a context for every
//! member; for small files that is most of the cost of decompressing them.
//! [`FrameDecoder`] takes a context from a small per-thread pool and gives
//! it back when dropped.

use std::cell::RefCell;
use std::io::{self, BufRead, Read};

use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};

/// Contexts kept per thread (a restore decodes one member at a time per thread).
const POOL: usize = 4;

thread_local! {
    static CONTEXTS: RefCell<Vec<DCtx<'static>>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Finished,
}

/// Decompresses exactly one zstd frame from `reader`, leaving whatever
/// follows the frame unread in it.
pub(crate) struct FrameDecoder<R> {
    reader: R,
    ctx: Option<DCtx<'static>>,
    state: State,
}

impl<R: BufRead> FrameDecoder<R> {
    pub(crate) fn new(reader: R) -> Self {
        let ctx = CONTEXTS
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_else(DCtx::create);
        FrameDecoder {
            reader,
            ctx: Some(ctx),
            state: State::Reading,
        }
    }

    /// The reader underneath (positioned just past the frame once it ended).
    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }
}

/// One call of the decompressor: returns (input bytes used, bytes written).
fn step(
    ctx: &mut DCtx<'static>,
    state: &mut State,
    input: &[u8],
    buf: &mut [u8],
) -> io::Result<(usize, usize)> {
    let mut src = InBuffer::around(input);
    let mut dst = OutBuffer::around(buf);
    let hint = ctx
        .decompress_stream(&mut dst, &mut src)
        .map_err(|code| io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
    if hint == 0 {
        *state = State::Finished;
    }
    Ok((src.pos(), dst.pos()))
}

impl<R: BufRead> Read for FrameDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let FrameDecoder { reader, ctx, state } = self;
        let ctx = ctx.as_mut().expect("a context until dropped");
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if *state == State::Finished {
                return Ok(0);
            }
            let input = reader.fill_buf()?;
            if input.is_empty() {
                // No more input: whatever the context still holds, then the
                // frame must be over.
                let (_, written) = step(ctx, state, &[], buf)?;
                if written > 0 || *state == State::Finished {
                    return Ok(written);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "incomplete frame",
                ));
            }
            let (read, written) = step(ctx, state, input, buf)?;
            reader.consume(read);
            if written > 0 {
                return Ok(written);
            }
        }
    }
}

impl<R> Drop for FrameDecoder<R> {
    fn drop(&mut self) {
        if let Some(mut ctx) = self.ctx.take()
            && ctx.reset(ResetDirective::SessionOnly).is_ok()
        {
            CONTEXTS.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOL {
                    pool.push(ctx);
                }
            });
        }
    }
}
