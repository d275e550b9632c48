//! An I/O stream that records whether any byte of a request has been written through it.
//!
//! The HTTPS client wraps each TLS stream (after the handshake) in a [`Tracked`] and clears the flag
//! before each request: a failure while the flag is still clear means nothing of that request can
//! have reached the host (not sent, nothing owed); once it is set, the outcome is unknown.
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream plus a shared "something was written" flag.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    written: Arc<AtomicBool>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, written: Arc<AtomicBool>) -> Self {
        Tracked { inner, written }
    }

    fn mark(&self, r: &Poll<io::Result<usize>>) {
        // Conservative: any accepted byte counts, even if it is still in the TLS layer's buffer.
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.written.store(true, Ordering::SeqCst);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.mark(&r);
        r
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.mark(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn only_a_written_byte_sets_the_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut t = Tracked::new(Vec::<u8>::new(), flag.clone());
        t.write_all(b"").await.expect("empty write");
        t.flush().await.expect("flush");
        assert!(!flag.load(Ordering::SeqCst));
        t.write_all(b"P").await.expect("write");
        assert!(flag.load(Ordering::SeqCst));
    }
}
