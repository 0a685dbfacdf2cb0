//! Diagnostics for the files operators write: a problem printed as
//! `FILE:LINE:COL: message`, the YAML position index ([`position`]), and
//! reading a text file with a size cap. Imports nothing of the crate.

pub mod position;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem, with its position when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl Diagnostic {
    /// A problem at a known position.
    pub fn at(
        file: impl Into<PathBuf>,
        line: usize,
        col: usize,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            position: Some((line, col)),
            message: message.into(),
        }
    }

    /// A problem that concerns the whole file.
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            position: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                line,
                col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Several problems, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Reads a small text file with the hardening every input file gets:
/// symlinks followed to a regular file, a size cap, UTF-8. `what` names the
/// file in messages ("keys file").
///
/// # Errors
/// One diagnostic naming what is wrong.
pub fn read_text_file(path: &Path, max: u64, what: &str) -> Result<String, Diagnostic> {
    let meta = std::fs::metadata(path).map_err(|e| {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound if std::fs::symlink_metadata(path).is_ok() => {
                format!("{what} is a symlink to a file that does not exist")
            }
            std::io::ErrorKind::NotFound => format!("{what} not found"),
            _ => format!("cannot read {what}: {e}"),
        };
        Diagnostic::file(path, message)
    })?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(Diagnostic::file(
            path,
            format!("{what} must be a regular file, but this is {kind}"),
        ));
    }
    let too_big = || {
        Diagnostic::file(
            path,
            format!(
                "{what} is larger than {} MiB, the most scopegate reads",
                max / (1024 * 1024)
            ),
        )
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)
        .and_then(|f| {
            use std::io::Read as _;
            f.take(max + 1).read_to_end(&mut bytes)
        })
        .map_err(|e| Diagnostic::file(path, format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > max {
        // It grew between the check and the read.
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let col = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        Diagnostic::at(path, line, col, format!("{what} is not valid UTF-8"))
    })
}
