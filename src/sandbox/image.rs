//! What an execution in a session changed: pages of the guest's linear memory.
//!
//! The guest keeps everything in its linear memory (QuickJS's heap, the Rust runtime's
//! state) and `run` returns with its stack where it began, so the memory after one
//! execution is the whole state the next one needs. An execution in a session starts
//! from the session's memory ([`super::MemoryFile`]) and gives back only the 4 KiB
//! pages it wrote ([`MemoryImage`]); written over that memory, they make the memory
//! the session's next execution starts from.

/// Bytes per chunk: the host's page size, the unit a copy-on-write memory dirties.
pub const CHUNK: usize = 4096;

/// Some pages of a guest memory (each its index and [`CHUNK`] bytes, by increasing
/// index), and the memory's size. All in one buffer, so capturing them is one
/// allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryImage {
    /// The memory's size in bytes (a whole number of wasm pages).
    pub size: u64,
    /// Each page's index (u32, little-endian) and bytes.
    entries: Vec<u8>,
}

impl MemoryImage {
    /// The pages `indices` (increasing) of `memory`: what an execution wrote, as
    /// [`super::mapped::written_pages`] lists it.
    pub fn from_pages(memory: &[u8], indices: &[u32]) -> Self {
        let mut entries = Vec::with_capacity(indices.len() * (4 + CHUNK));
        let spare = entries.spare_capacity_mut();
        populate(spare.as_mut_ptr().cast(), spare.len());
        for &index in indices {
            let start = index as usize * CHUNK;
            if let Some(page) = memory.get(start..start + CHUNK) {
                entries.extend_from_slice(&index.to_le_bytes());
                entries.extend_from_slice(page);
            }
        }
        Self { size: memory.len() as u64, entries }
    }

    /// Each page's index and bytes, in increasing index order.
    pub fn chunks(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.entries.chunks_exact(4 + CHUNK).map(|entry| {
            let (index, bytes) = entry.split_at(4);
            (u32::from_le_bytes(index.try_into().expect("four bytes")), bytes)
        })
    }

    /// The image as bytes for a store: the size (u64, little-endian), then the
    /// pages as [`MemoryImage::chunks`] gives them.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + self.entries.len());
        bytes.extend_from_slice(&self.size.to_le_bytes());
        bytes.extend_from_slice(&self.entries);
        bytes
    }

    /// An image [`MemoryImage::encode`] made; `None` for bytes it cannot have made.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (size, entries) = bytes.split_at_checked(8)?;
        let size = u64::from_le_bytes(size.try_into().ok()?);
        if entries.len() % (4 + CHUNK) != 0 || size % 65_536 != 0 {
            return None;
        }
        let image = Self { size, entries: entries.to_vec() };
        let mut last = None;
        for (index, _) in image.chunks() {
            if (u64::from(index) + 1) * CHUNK as u64 > size || last.is_some_and(|l| l >= index) {
                return None;
            }
            last = Some(index);
        }
        Some(image)
    }

    /// How many pages it holds.
    pub fn len(&self) -> usize {
        self.entries.len() / (4 + CHUNK)
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps only the pages `keep` says yes to, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, &[u8]) -> bool) {
        let mut at = 0;
        for from in (0..self.entries.len()).step_by(4 + CHUNK) {
            let entry = &self.entries[from..from + 4 + CHUNK];
            let (index, bytes) = entry.split_at(4);
            if keep(u32::from_le_bytes(index.try_into().expect("four bytes")), bytes) {
                self.entries.copy_within(from..from + 4 + CHUNK, at);
                at += 4 + CHUNK;
            }
        }
        self.entries.truncate(at);
    }
}

/// Makes the whole pages within `len` bytes at `start` resident and writable at once
/// (`MADV_POPULATE_WRITE`), where they would otherwise fault in one by one as they are
/// first written. Only a hint: ranges under 64 KiB, and any failure, are left to
/// ordinary faults.
fn populate(start: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    let first = (start as usize).div_ceil(PAGE) * PAGE;
    let end = (start as usize + len) / PAGE * PAGE;
    if end <= first || end - first < 16 * PAGE {
        return;
    }
    // SAFETY: [first, end) lies within the caller's writable allocation;
    // MADV_POPULATE_WRITE only faults its pages in (copying any copy-on-write page it
    // shares), and changes no byte's value.
    let _ = unsafe {
        rustix::mm::madvise(first as *mut std::ffi::c_void, end - first, rustix::mm::Advice::LinuxPopulateWrite)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_pages_it_was_given() {
        let mut memory = vec![0u8; 5 * CHUNK];
        memory[CHUNK + 5] = 1;
        memory[4 * CHUNK] = 9;
        let image = MemoryImage::from_pages(&memory, &[1, 4]);
        assert_eq!(image.size, 5 * CHUNK as u64);
        assert_eq!(image.len(), 2);
        let pages: Vec<(u32, &[u8])> = image.chunks().collect();
        assert_eq!(pages[0], (1, &memory[CHUNK..2 * CHUNK]));
        assert_eq!(pages[1], (4, &memory[4 * CHUNK..]));
        assert!(MemoryImage::default().is_empty());
        assert!(MemoryImage::from_pages(&memory, &[9]).is_empty(), "a page past the memory is not taken");
    }

    #[test]
    fn keeps_only_the_pages_asked_for_in_order() {
        let memory: Vec<u8> = (0..5 * CHUNK).map(|i| (i / CHUNK) as u8).collect();
        let mut image = MemoryImage::from_pages(&memory, &[0, 1, 2, 3, 4]);
        image.retain(|index, bytes| {
            assert_eq!(bytes[0], index as u8);
            index % 2 == 1
        });
        let kept: Vec<(u32, u8)> = image.chunks().map(|(index, bytes)| (index, bytes[CHUNK - 1])).collect();
        assert_eq!(kept, [(1, 1), (3, 3)]);
        assert_eq!(image.size, 5 * CHUNK as u64);
        image.retain(|_, _| false);
        assert!(image.is_empty());
    }
}
