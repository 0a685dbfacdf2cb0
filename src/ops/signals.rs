//! Signals caught from the moment they are registered, read later by an
//! async task: SIGHUP for the file watcher, SIGTERM/SIGINT/SIGQUIT for the
//! server's shutdown. Registering early replaces the default action (a
//! SIGHUP or SIGTERM would otherwise end the process before the task that
//! reads it has started), and a signal that arrives before then waits in
//! the pipe.

use std::io;
use std::os::unix::net::UnixStream;

/// One signal, delivered into a socket pair by signal-hook's self-pipe.
#[derive(Debug)]
pub struct SignalPipe {
    std: Option<UnixStream>,
    stream: Option<tokio::net::UnixStream>,
}

impl SignalPipe {
    /// Catches `signal` from now on.
    ///
    /// # Errors
    /// When the socket pair or the handler cannot be set up.
    pub fn register(signal: libc::c_int) -> io::Result<SignalPipe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal, write)?;
        Ok(SignalPipe {
            std: Some(read),
            stream: None,
        })
    }

    /// Waits for the next delivery; deliveries that came together count as
    /// one. Must run inside a tokio runtime with I/O enabled.
    ///
    /// # Errors
    /// When the pipe cannot be read.
    pub async fn recv(&mut self) -> io::Result<()> {
        if let Some(std) = self.std.take() {
            self.stream = Some(tokio::net::UnixStream::from_std(std)?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::other("signal pipe lost"));
        };
        let mut buf = [0u8; 64];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}
