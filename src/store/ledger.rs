//! The ledger's writer: one record per execution, per tool call and per model call,
//! committed in batches (group commit).
//!
//! An execution hands its records over and awaits the commit, so the execution itself
//! never touches the database, many executions share one transaction, and no
//! execution acknowledged to a client is missing after a crash. One append is in
//! flight at a time; whatever arrives meanwhile goes into the next one, so under load
//! a batch grows until one commit carries everything that waited for it, and the
//! number of database round trips per record falls as the load rises. An execution
//! in a session hands over the session's return too ([`Ledger::record_returning`]):
//! the pages it keeps are committed in the same transaction as its records.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Giveback, Record, Returned, Store, StoreError, UsageQuery, UsageRow};

/// What a batch's commit answers: what its session's return did, if it carried one.
type Committed = Result<Option<Result<Returned, StoreError>>, StoreError>;

struct Batch {
    records: Vec<Record>,
    /// A session given back in the same transaction ([`Ledger::record_returning`]).
    giveback: Option<Giveback>,
    done: oneshot::Sender<Committed>,
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
                let (mut records, mut returns, mut carriers) = (Vec::with_capacity(count), Vec::new(), Vec::new());
                for (index, batch) in batches.iter_mut().enumerate() {
                    records.append(&mut batch.records);
                    if let Some(giveback) = batch.giveback.take() {
                        returns.push(giveback);
                        carriers.push(index);
                    }
                }
                let (count, returned) = (records.len(), returns.len());
                let result =
                    if count == 0 && returned == 0 { Ok(Vec::new()) } else { writer.append(records, returns).await };
                if let Err(e) = &result {
                    tracing::error!(error = %e, records = count, returns = returned, "ledger write failed");
                }
                metrics::counter!("sandgate_ledger_records_total").increment(count as u64);
                metrics::counter!("sandgate_ledger_commits_total").increment(1);
                // Each batch's return answered in order (carriers ascend).
                let mut answers = result.iter().flatten().cloned().zip(carriers).peekable();
                for (index, batch) in batches.into_iter().enumerate() {
                    let answer = match &result {
                        Err(error) => Err(error.clone()),
                        Ok(_) => Ok(answers.next_if(|(_, carrier)| *carrier == index).map(|(answer, _)| answer)),
                    };
                    let _ = batch.done.send(answer);
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
        self.writer.send(Batch { records, giveback: None, done }).map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?.map(drop)
    }

    /// Appends `records` and gives `giveback`'s session back in the same
    /// transaction (adding its own records as the return turns out); resolves once
    /// committed, with what the return did.
    pub async fn record_returning(
        &self,
        records: Vec<Record>,
        giveback: Giveback,
    ) -> Result<Result<Returned, StoreError>, StoreError> {
        let (done, committed) = oneshot::channel();
        self.writer.send(Batch { records, giveback: Some(giveback), done }).map_err(|_| stopped())?;
        let answer = committed.await.map_err(|_| stopped())??;
        Ok(answer.unwrap_or_else(|| Err(StoreError("the ledger lost a session's return".into()))))
    }

    /// Hands `records` to the writer without waiting for the commit; a write error is
    /// logged. [`Ledger::flush`] waits for everything handed over so far.
    pub fn record_detached(&self, records: Vec<Record>) {
        let (done, _) = oneshot::channel();
        if self.writer.send(Batch { records, giveback: None, done }).is_err() {
            tracing::error!("the ledger writer has stopped; records dropped");
        }
    }

    /// Resolves once every record handed over before the call is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.writer.send(Batch { records: Vec::new(), giveback: None, done }).map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?.map(drop)
    }

    /// Usage totals for `query`.
    pub async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.store.usage(&query).await
    }
}
