//! Batch refusals: the entries a queue refused over several batches (or several queues) of one
//! operation, summed into one [`QueueError::Partial`]. The SQS adapter and the in-memory queue
//! both report a partly refused delete, release or resend through [`Refusals`].

use crate::ports::QueueError;

/// A refusal's error, kept as the source of the operation's error.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The first refusal of an operation: its text, and the error itself when it is one.
type First = (String, Option<BoxError>);

/// The refusals of one operation so far: how many entries were refused, the first refusal
/// (its reason, and its error as the source) and the receipts of the refused entries.
#[derive(Debug, Default)]
pub struct Refusals {
    failed: usize,
    first: Option<First>,
    receipts: Vec<String>,
}

impl Refusals {
    /// No refusals yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `failed` refused entries with `receipts` (fewer than `failed` where some could not
    /// be told); `first` is their first refusal, kept (as the detail and the source) unless
    /// an earlier one is.
    pub fn add<E>(
        &mut self,
        failed: usize,
        first: Option<E>,
        receipts: impl IntoIterator<Item = String>,
    ) where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.failed += failed;
        if self.first.is_none() {
            self.first = first.map(|e| (e.to_string(), Some(Box::new(e) as BoxError)));
        }
        self.receipts.extend(receipts);
    }

    /// Adds one refused entry: its receipt, and its error, kept if it is the first.
    pub fn refuse<E>(&mut self, receipt: String, error: E)
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.add(1, Some(error), [receipt]);
    }

    /// Adds one part's result: a [`QueueError::Partial`] is summed in (its `op` dropped, its
    /// detail and source kept if it is the first), any other error is returned as it is.
    pub fn absorb(&mut self, result: Result<(), QueueError>) -> Result<(), QueueError> {
        match result {
            Ok(()) => Ok(()),
            Err(QueueError::Partial {
                failed,
                detail,
                refused,
                source,
                ..
            }) => {
                self.failed += failed;
                self.first.get_or_insert((detail, source));
                self.receipts.extend(refused);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `Ok` when nothing was refused, else one [`QueueError::Partial`] for `op` with the sum
    /// of the refusals, the first one's reason and source, and every refused receipt.
    pub fn finish(self, op: &'static str) -> Result<(), QueueError> {
        match self.first {
            None => Ok(()),
            Some((detail, source)) => Err(QueueError::Partial {
                op,
                failed: self.failed,
                detail,
                refused: self.receipts,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_refused_is_ok() {
        let mut r = Refusals::new();
        r.absorb(Ok(())).unwrap();
        r.add(0, None::<std::io::Error>, Vec::new());
        assert!(r.finish("delete").is_ok());
    }

    #[test]
    fn refusals_sum_and_keep_the_first_reason() {
        let mut r = Refusals::new();
        r.absorb(Err(QueueError::Partial {
            op: "inner",
            failed: 2,
            detail: "first".into(),
            refused: vec!["a".into(), "b".into()],
            source: None,
        }))
        .unwrap();
        r.refuse("c".into(), std::io::Error::other("second"));
        r.add(
            3,
            Some(std::io::Error::other("third")),
            vec!["d".to_string()],
        );
        let e = r.finish("release").unwrap_err();
        assert!(
            matches!(
                &e,
                QueueError::Partial { op: "release", failed: 6, detail, refused, .. }
                    if detail == "first" && *refused == ["a", "b", "c", "d"]
            ),
            "{e}"
        );
    }

    #[test]
    fn the_first_refusal_is_the_source() {
        let mut r = Refusals::new();
        r.refuse("a".into(), std::io::Error::other("no such receipt"));
        r.refuse("b".into(), std::io::Error::other("later"));
        let e = r.finish("delete").unwrap_err();
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "no such receipt");
    }

    #[test]
    fn another_error_is_returned_as_is() {
        let mut r = Refusals::new();
        let e = QueueError::Backend {
            op: "delete",
            source: "down".into(),
        };
        let text = e.to_string();
        assert_eq!(r.absorb(Err(e)).unwrap_err().to_string(), text);
    }
}
