//! Batch refusals: the entries a queue refused over several batches (or several queues) of one
//! operation, summed into one [`QueueError::Partial`]. The SQS adapter and the in-memory queue
//! both report a partly refused delete, release or resend through [`Refusals`].

use crate::ports::QueueError;

/// The refusals of one operation so far: how many entries were refused, the first refusal's
/// reason and the receipts of the refused entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    failed: usize,
    first: Option<String>,
    receipts: Vec<String>,
}

impl Refusals {
    /// No refusals yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `failed` refused entries with `receipts` (fewer than `failed` where some could not
    /// be told); `detail` is their first reason, kept unless an earlier one is.
    pub fn add(
        &mut self,
        failed: usize,
        detail: Option<String>,
        receipts: impl IntoIterator<Item = String>,
    ) {
        self.failed += failed;
        if self.first.is_none() {
            self.first = detail;
        }
        self.receipts.extend(receipts);
    }

    /// Adds one refused entry: its receipt, and its reason, computed only if it is the first.
    pub fn refuse(&mut self, receipt: String, detail: impl FnOnce() -> String) {
        self.failed += 1;
        self.first.get_or_insert_with(detail);
        self.receipts.push(receipt);
    }

    /// Adds one part's result: a [`QueueError::Partial`] is summed in (its `op` dropped), any
    /// other error is returned as it is.
    pub fn absorb(&mut self, result: Result<(), QueueError>) -> Result<(), QueueError> {
        match result {
            Ok(()) => Ok(()),
            Err(QueueError::Partial {
                failed,
                detail,
                refused,
                ..
            }) => {
                self.add(failed, Some(detail), refused);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `Ok` when no refusal had a reason, else one [`QueueError::Partial`] for `op` with the
    /// sum of the refusals, the first reason and every refused receipt.
    pub fn finish(self, op: &'static str) -> Result<(), QueueError> {
        match self.first {
            None => Ok(()),
            Some(detail) => Err(QueueError::Partial {
                op,
                failed: self.failed,
                detail,
                refused: self.receipts,
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
        r.add(0, None, Vec::new());
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
        }))
        .unwrap();
        r.refuse("c".into(), || "second".into());
        r.add(3, Some("third".into()), vec!["d".to_string()]);
        let e = r.finish("release").unwrap_err();
        assert!(
            matches!(
                &e,
                QueueError::Partial { op: "release", failed: 6, detail, refused }
                    if detail == "first" && *refused == ["a", "b", "c", "d"]
            ),
            "{e}"
        );
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
