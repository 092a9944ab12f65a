//! The ledger's writer: one record per execution, per tool call and per model call,
//! committed in batches (group commit).
//!
//! An execution hands its records over and awaits the commit, so the execution itself
//! never touches the database, many executions share one transaction, and no
//! execution acknowledged to a client is missing after a crash. One append is in
//! flight at a time; whatever arrives meanwhile goes into the next one, so under load
//! a batch grows until one commit carries everything that waited for it, and the
//! number of database round trips per record falls as the load rises.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Record, Store, StoreError, UsageQuery, UsageRow};

struct Batch {
    records: Vec<Record>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A handle to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    writer: mpsc::UnboundedSender<Batch>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// Largest number of records committed in one transaction.
const MAX_BATCH: usize = 4096;

fn stopped() -> StoreError {
    StoreError("the ledger writer has stopped".into())
}

impl Ledger {
    /// Starts the writer task over `store` (on the current tokio runtime).
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();
        let writer = store.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batches = vec![first];
                let mut count = batches[0].records.len();
                while count < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(next) => {
                            count += next.records.len();
                            batches.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let records: Vec<Record> = batches.iter_mut().flat_map(|b| std::mem::take(&mut b.records)).collect();
                let result = if records.is_empty() { Ok(()) } else { writer.append(&records).await };
                if let Err(e) = &result {
                    tracing::error!(error = %e, records = records.len(), "ledger write failed");
                }
                metrics::counter!("sandgate_ledger_records_total").increment(records.len() as u64);
                metrics::counter!("sandgate_ledger_commits_total").increment(1);
                for batch in batches {
                    let _ = batch.done.send(result.clone());
                }
            }
        });
        Self { writer: tx, store }
    }

    /// The store behind the ledger.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Appends `records` and resolves once they are committed.
    pub async fn record(&self, records: Vec<Record>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        self.writer.send(Batch { records, done }).map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?
    }

    /// Hands `records` to the writer without waiting for the commit; a write error is
    /// logged. [`Ledger::flush`] waits for everything handed over so far.
    pub fn record_detached(&self, records: Vec<Record>) {
        let (done, _) = oneshot::channel();
        if self.writer.send(Batch { records, done }).is_err() {
            tracing::error!("the ledger writer has stopped; records dropped");
        }
    }

    /// Resolves once every record handed over before the call is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.writer.send(Batch { records: Vec::new(), done }).map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?
    }

    /// Usage totals for `query`.
    pub async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.store.usage(&query).await
    }
}
