//! Sessions' memories as this replica keeps them between executions.
//!
//! The store holds a session's memory as pages (those that differ from a fresh
//! guest's). An execution needs it whole, as a [`MemoryFile`] the sandbox maps; making
//! one means reading every page from the store. So after an execution the file stays
//! here, under the session's id and its execution count, and the session's next
//! execution on this replica takes it back if the count is still the one it left
//! (no execution ran elsewhere since), then pays only for the pages it touches. Only
//! the pages an execution changed go to the store (the changed bytes alone, for pages
//! the store keeps already: [`Changes`]), and the same pages are written into the file
//! once the store has them.
//!
//! The files are held up to [`MemoryCache::BUDGET`] bytes, least recently used
//! leaving first, and for [`MemoryCache::IDLE`] at most: an idle session costs
//! nothing here once it has been pushed out or that time has passed.
//!
//! The most recently used files also keep the instance their last execution ran in,
//! its memory still mapped (see `sandbox::Warm`): at most
//! [`MemoryCache::MAX_INSTANCES`] of them, for [`MemoryCache::INSTANCE_IDLE`] at
//! most, since each holds its memory's pages resident (about 0.6 MiB for a small
//! session) and a file descriptor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sandbox::mapped::PageSet;
use crate::sandbox::{MemoryFile, MemoryImage};
use crate::store::{patch, StoredMemory, PAGE};

/// A session's memory: the file executions map, and which pages the store keeps.
#[derive(Debug)]
pub(super) struct SessionMemory {
    pub file: Arc<MemoryFile>,
    /// The pages the store keeps.
    kept: PageSet,
}

impl SessionMemory {
    /// The memory in `file`, made from `stored`.
    pub fn new(file: MemoryFile, stored: &StoredMemory) -> Self {
        let mut kept = PageSet::default();
        for (page, _) in &stored.pages {
            kept.insert(*page as usize);
        }
        Self { file: Arc::new(file), kept }
    }

    /// Bytes of the pages the store keeps.
    #[cfg(test)]
    pub fn kept_bytes(&self) -> u64 {
        self.kept.len() * PAGE as u64
    }

    /// Bytes the store would keep once `written` is written too.
    pub fn kept_bytes_with(&self, written: &MemoryImage) -> u64 {
        let new = written.chunks().filter(|(page, _)| !self.kept.contains(*page as usize)).count() as u64;
        (self.kept.len() + new) * PAGE as u64
    }

    /// Leaves out of `written` the pages that hold what the memory holds there
    /// already, and returns what the store is to write of the rest: the pages it
    /// keeps already and whose changes are small go as a patch ([`patch`]), the others
    /// whole.
    pub fn changes(&self, written: &mut MemoryImage) -> Changes {
        let mut changes = Changes::default();
        let mut now = [0u8; PAGE];
        written.retain(|page, bytes| {
            // A page that cannot be read is written whole.
            if !self.file.read_page(page, &mut now).unwrap_or(false) {
                return true;
            }
            if now[..] == *bytes {
                return false;
            }
            if self.kept.contains(page as usize) && patch::diff(page, &now, bytes, &mut changes.patch) {
                changes.patched.insert(page as usize);
            }
            true
        });
        changes
    }

    /// Writes `written` (which the store now keeps) into the file.
    pub fn apply(&mut self, written: &MemoryImage) -> std::io::Result<()> {
        self.file.apply(written)?;
        for (page, _) in written.chunks() {
            self.kept.insert(page as usize);
        }
        Ok(())
    }
}

/// What an execution changed in a session's memory, as the store writes it: the
/// written pages not in `patched`, whole, and `patch`.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// The changed runs of pages the store keeps already.
    pub patch: Vec<u8>,
    /// The pages `patch` covers.
    patched: PageSet,
}

impl Changes {
    /// Whether `page` goes in the patch (else it is written whole).
    pub fn patched(&self, page: u32) -> bool {
        self.patched.contains(page as usize)
    }
}

/// Recently used sessions' memories, by session id.
#[derive(Debug)]
pub(super) struct MemoryCache {
    inner: Mutex<Inner>,
    budget: u64,
    /// Memories kept at most: each holds a file descriptor (see `service::fds`).
    max_entries: usize,
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::with_budget(Self::BUDGET)
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: u64,
    clock: u64,
    /// Entries whose file keeps an instance.
    instances: usize,
}

#[derive(Debug)]
struct Entry {
    /// The session's execution count this memory is the state after.
    executions: u64,
    memory: SessionMemory,
    /// Bytes its file takes, as counted when it was put here.
    bytes: u64,
    used: u64,
    kept_at: Instant,
    /// Its file keeps an instance.
    instance: bool,
}

impl MemoryCache {
    /// Bytes of memory files kept at most (the pages they hold).
    pub const BUDGET: u64 = 256 << 20;
    /// How long a memory is kept unused.
    pub const IDLE: Duration = Duration::from_secs(300);
    /// Instances kept with the files at most.
    pub const MAX_INSTANCES: usize = 16;
    /// How long an instance is kept unused.
    pub const INSTANCE_IDLE: Duration = Duration::from_secs(30);

    /// A cache of at most `budget` bytes.
    pub fn with_budget(budget: u64) -> Self {
        Self::with_limits(budget, usize::MAX)
    }

    /// A cache of at most `budget` bytes in at most `max_entries` memories.
    pub fn with_limits(budget: u64, max_entries: usize) -> Self {
        Self { inner: Mutex::default(), budget, max_entries: max_entries.max(1) }
    }

    /// Takes session `id`'s memory out, when the one here is its state after
    /// `executions` executions; a stale one is dropped.
    pub fn take(&self, id: &str, executions: u64) -> Option<SessionMemory> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.remove(id)?;
        inner.report();
        (entry.executions == executions).then_some(entry.memory)
    }

    /// Keeps `memory` as session `id`'s state after `executions` executions, making
    /// room by dropping the least recently used. Each memory holds a descriptor, and
    /// one whose file keeps an instance a second: together within the cache's
    /// entries.
    pub fn put(&self, id: &str, executions: u64, memory: SessionMemory) {
        let size = memory.file.held_bytes();
        if size > self.budget {
            return;
        }
        let mut instance = memory.file.settle_instance();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.remove(id);
        while inner.bytes + size > self.budget
            || inner.entries.len() + inner.instances + 1 + usize::from(instance) > self.max_entries
        {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, e)| e.used).map(|(id, _)| id.clone()) else {
                break;
            };
            inner.remove(&oldest);
        }
        if instance && 2 > self.max_entries {
            memory.file.drop_instance();
            instance = false;
        }
        // Past the most instances kept, the least recently used others' go.
        while instance && inner.instances >= Self::MAX_INSTANCES {
            let oldest = inner.entries.values_mut().filter(|entry| entry.instance).min_by_key(|entry| entry.used);
            let Some(oldest) = oldest else { break };
            oldest.memory.file.drop_instance();
            oldest.instance = false;
            inner.instances -= 1;
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.bytes += size;
        inner.instances += usize::from(instance);
        let entry = Entry { executions, memory, bytes: size, used, kept_at: Instant::now(), instance };
        inner.entries.insert(id.to_string(), entry);
        inner.report();
    }

    /// Drops the memories unused for [`MemoryCache::IDLE`] at `now`, and the
    /// instances unused for [`MemoryCache::INSTANCE_IDLE`].
    pub fn sweep(&self, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = (inner.entries.len(), inner.instances);
        inner.entries.retain(|_, entry| now.duration_since(entry.kept_at) < Self::IDLE);
        for entry in inner.entries.values_mut() {
            if entry.instance && now.duration_since(entry.kept_at) >= Self::INSTANCE_IDLE {
                entry.memory.file.drop_instance();
                entry.instance = false;
            }
        }
        inner.bytes = inner.entries.values().map(|entry| entry.bytes).sum();
        inner.instances = inner.entries.values().filter(|entry| entry.instance).count();
        if (inner.entries.len(), inner.instances) != before {
            inner.report();
        }
    }

    /// Forgets session `id`'s memory (the session ended).
    pub fn forget(&self, id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.remove(id);
        inner.report();
    }
}

impl Inner {
    /// Takes session `id`'s entry out, with what it counted.
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.bytes -= entry.bytes;
        self.instances -= usize::from(entry.instance);
        Some(entry)
    }

    /// `sandgate_session_memories_bytes` and `sandgate_session_memories`.
    fn report(&self) {
        metrics::gauge!("sandgate_session_memories_bytes").set(self.bytes as f64);
        metrics::gauge!("sandgate_session_memories").set(self.entries.len() as f64);
        metrics::gauge!("sandgate_session_instances").set(self.instances as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory of 1 MiB whose session changed its first `pages` pages.
    fn memory(pages: u32) -> SessionMemory {
        let page = vec![7; PAGE];
        let stored = StoredMemory { size: 1 << 20, pages: (0..pages).map(|i| (i, page.clone())).collect() };
        let pristine = Arc::new(crate::sandbox::mapped::Pristine::new(vec![0; 64 * 1024]).unwrap());
        let file = MemoryFile::create(pristine, 1 << 20, stored.pages.iter().map(|(i, b)| (*i, &b[..])))
            .expect("a memory file");
        SessionMemory::new(file, &stored)
    }

    #[test]
    fn keeps_the_latest_state_only_and_within_budget() {
        let cache = MemoryCache::with_budget(40 * PAGE as u64);
        cache.put("a", 3, memory(1));
        assert!(cache.take("a", 4).is_none(), "a state after another count is stale");
        assert!(cache.take("a", 3).is_none(), "a stale one is dropped");
        cache.put("a", 3, memory(1));
        let taken = cache.take("a", 3).expect("the same count");
        assert_eq!(taken.kept_bytes(), PAGE as u64);
        assert!(cache.take("a", 3).is_none(), "taking takes it out");
        // Past the budget, the least recently used go first.
        for (i, id) in ["b", "c", "d", "e", "f"].iter().enumerate() {
            cache.put(id, i as u64, memory(10));
        }
        assert!(cache.take("b", 0).is_none());
        assert!(cache.take("f", 4).is_some());
        // Unused for long enough, they go.
        cache.sweep(Instant::now());
        assert!(cache.take("e", 3).is_some(), "used just now");
        cache.put("e", 3, memory(1));
        cache.sweep(Instant::now() + MemoryCache::IDLE);
        assert!(cache.take("e", 3).is_none());
    }

    #[test]
    fn counts_the_pages_it_would_keep() {
        let mut memory = memory(2);
        let mut bytes = vec![0u8; 1 << 20];
        bytes[PAGE] = 9;
        bytes[2 * PAGE] = 9;
        let written = MemoryImage::from_pages(&bytes, &[1, 2]);
        assert_eq!(memory.kept_bytes_with(&written), 3 * PAGE as u64, "page 1 is kept already");
        memory.apply(&written).unwrap();
        assert_eq!(memory.kept_bytes(), 3 * PAGE as u64);
    }
}
