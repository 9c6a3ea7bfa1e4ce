//! The Unix stream socket both ends speak over, registered with the
//! runtime for readability only.
//!
//! tokio's `UnixStream` asks epoll for both readability and writability,
//! edge-triggered. On a Unix socket every `recv` by the peer frees send
//! space and so raises "writable" on this end, which wakes this end's
//! thread if it sleeps in `epoll_wait`, though nothing here waits to write:
//! writes go straight to the socket and almost never find it full. Profiles
//! of the point-read benchmark put about a tenth of the daemon's CPU in
//! those wake-ups (its `recv` waking the client's epoll), on both sides.
//!
//! So the socket is registered for readability only, and a write that
//! finds the send buffer full registers a duplicate of the descriptor for
//! writability, just until the write goes through. Nothing is lost either
//! way: the duplicate, added while the buffer is full, reports writable as
//! soon as it is not.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Splits a connected stream into its two halves, registered with the
/// current runtime (which must have I/O enabled). The stream is put in
/// non-blocking mode.
pub fn split(stream: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    stream.set_nonblocking(true)?;
    let fd = Arc::new(register(stream, Interest::READABLE)?);
    Ok((ReadHalf(fd.clone()), WriteHalf { fd, full: None }))
}

/// Registers `stream` with the current runtime for `interest`.
fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: the `UnixStream` owns its descriptor, which stays open and
    // the same until the `AsyncFd` (which owns the stream) is dropped; this
    // module never takes the stream out or replaces it.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(io::Error::from)
}

/// The reading half; reads wait for readability.
pub struct ReadHalf(Arc<AsyncFd<UnixStream>>);

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match ready.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A short read emptied the socket: wait for the next
                    // edge rather than spend a `read` to learn it.
                    if n > 0 && n < room {
                        ready.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: the readiness is cleared, and
                // the next poll waits for the next edge.
                Err(_would_block) => continue,
            }
        }
    }
}

/// The writing half; a write goes straight to the socket.
pub struct WriteHalf {
    fd: Arc<AsyncFd<UnixStream>>,
    /// A duplicate of the descriptor registered for writability, while a
    /// write waits for room in a full send buffer.
    full: Option<AsyncFd<UnixStream>>,
}

impl WriteHalf {
    /// Registers the duplicate that waits for room, if not yet done.
    fn wait_for_room(&mut self) -> io::Result<&AsyncFd<UnixStream>> {
        let full = match self.full.take() {
            Some(full) => full,
            None => register(self.fd.get_ref().try_clone()?, Interest::WRITABLE)?,
        };
        Ok(self.full.insert(full))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.fd.get_ref().write(buf) {
                Ok(n) => {
                    // Room again: stop listening for it.
                    self.full = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let full = self.wait_for_room()?;
                    let mut ready = ready!(full.poll_write_ready(cx))?;
                    // Writable as of the last edge; try again, and if the
                    // buffer is still full, wait for the next one.
                    ready.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.fd.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Bytes go both ways, and EOF reads as 0 after a shutdown.
    #[test]
    fn bytes_go_both_ways_and_shutdown_reads_as_eof() {
        rt().block_on(async {
            let (a, b) = UnixStream::pair().expect("pair");
            let (mut ar, mut aw) = split(a).expect("split");
            let (mut br, mut bw) = split(b).expect("split");
            aw.write_all(b"ping").await.expect("write");
            let mut got = [0u8; 4];
            br.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"ping");
            bw.write_all(b"pong").await.expect("write");
            ar.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"pong");
            aw.shutdown().await.expect("shutdown");
            assert_eq!(br.read(&mut got).await.expect("read"), 0);
        });
    }

    /// A write larger than the socket's buffers waits for the peer to read
    /// (through the duplicate registered for writability) and loses
    /// nothing.
    #[test]
    fn a_write_into_a_full_buffer_waits_for_room() {
        rt().block_on(async {
            let (a, b) = UnixStream::pair().expect("pair");
            let (_ar, mut aw) = split(a).expect("split");
            let (mut br, _bw) = split(b).expect("split");
            let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let expected = sent.clone();
            let writer = tokio::spawn(async move {
                aw.write_all(&sent).await.expect("write");
                aw.full.is_none()
            });
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            while got.len() < expected.len() {
                let n = br.read(&mut chunk).await.expect("read");
                assert!(n > 0, "EOF after {} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
                // Read slowly at first, so the writer finds the buffer full.
                if got.len() < 1024 * 1024 {
                    tokio::task::yield_now().await;
                }
            }
            assert!(got == expected, "the bytes read differ from those written");
            let done = tokio::time::timeout(std::time::Duration::from_secs(30), writer)
                .await
                .expect("the writer never finished: a wait for room was not woken");
            assert!(
                done.expect("writer"),
                "the duplicate registration outlived the write"
            );
        });
    }
}
