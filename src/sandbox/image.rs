//! A session's state between executions: the guest's linear memory.
//!
//! The guest keeps everything in its linear memory (QuickJS's heap, the Rust runtime's
//! state) and `run` returns with its stack where it began, so the memory after one
//! execution is the whole state the next one needs. Most of it is the pre-initialised
//! snapshot every instance starts from, so an image keeps only the 4 KiB chunks that
//! differ from that pristine memory: a trivial session is a few dozen kilobytes, and
//! restoring it writes only those chunks into a fresh instance (whose memory is the
//! pristine image already).

use wasmtime::{AsContextMut, Memory};

/// Bytes per chunk: the host's page size, the unit a copy-on-write memory dirties.
pub const CHUNK: usize = 4096;

const WASM_PAGE: u64 = 65_536;
const MAGIC: &[u8; 4] = b"SGMI";
const VERSION: u32 = 1;

/// The chunks of a guest memory that differ from the pristine image, and its size,
/// held as their encoding (see [`MemoryImage::encode`]): one buffer, so capturing
/// an image is one growing allocation, and reading it from the store or writing it
/// there copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryImage {
    /// The memory's size in bytes (a whole number of wasm pages); 0 for a session that
    /// has not run yet, whose state is the pristine image itself.
    pub size: u64,
    /// `SGMI`, version, size, chunk count, then each chunk's index and bytes.
    encoded: Vec<u8>,
}

/// Bytes before the first chunk: magic, version, size, count.
const HEADER: usize = 20;

impl Default for MemoryImage {
    fn default() -> Self {
        Self::with_chunks(0, std::iter::empty())
    }
}

/// An image that cannot be read back: a different format, or cut short.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a session image: {0}")]
pub struct ImageError(String);

impl MemoryImage {
    fn with_chunks<'a>(size: u64, chunks: impl Iterator<Item = (u32, &'a [u8])>) -> Self {
        let mut encoded = Vec::with_capacity(HEADER);
        encoded.extend_from_slice(MAGIC);
        encoded.extend_from_slice(&VERSION.to_le_bytes());
        encoded.extend_from_slice(&size.to_le_bytes());
        encoded.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for (index, bytes) in chunks {
            encoded.extend_from_slice(&index.to_le_bytes());
            encoded.extend_from_slice(bytes);
            count += 1;
        }
        encoded[16..HEADER].copy_from_slice(&count.to_le_bytes());
        Self { size, encoded }
    }

    /// The image of `memory`: its chunks that differ from `pristine` (those past
    /// the pristine size count when they hold anything but zeros).
    ///
    /// The changed chunks are found first, so the buffer is allocated once at its
    /// size and its pages made resident in one call rather than one fault each.
    pub fn capture(memory: &[u8], pristine: &[u8]) -> Self {
        let changed: Vec<u32> = memory
            .chunks(CHUNK)
            .enumerate()
            .filter(|(index, chunk)| {
                let start = index * CHUNK;
                match pristine.get(start..start + chunk.len()) {
                    Some(before) => before != *chunk,
                    None => chunk.iter().any(|&b| b != 0),
                }
            })
            .map(|(index, _)| index as u32)
            .collect();
        let mut encoded = Vec::with_capacity(HEADER + changed.len() * (4 + CHUNK));
        let spare = encoded.spare_capacity_mut();
        populate(spare.as_mut_ptr().cast(), spare.len());
        encoded.extend_from_slice(MAGIC);
        encoded.extend_from_slice(&VERSION.to_le_bytes());
        encoded.extend_from_slice(&(memory.len() as u64).to_le_bytes());
        encoded.extend_from_slice(&(changed.len() as u32).to_le_bytes());
        for index in changed {
            let start = index as usize * CHUNK;
            encoded.extend_from_slice(&index.to_le_bytes());
            encoded.extend_from_slice(&memory[start..(start + CHUNK).min(memory.len())]);
        }
        Self { size: memory.len() as u64, encoded }
    }

    /// Each changed chunk's index and bytes, in increasing index order.
    pub fn chunks(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.encoded[HEADER..].chunks(4 + CHUNK).map(|entry| {
            let (index, bytes) = entry.split_at(4);
            (u32::from_le_bytes(index.try_into().expect("four bytes")), bytes)
        })
    }

    /// Bytes the image takes once encoded.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    /// Writes the image into `memory` of a fresh instance (pristine contents), growing
    /// it first: growth passes through the store's memory limiter like any other.
    pub fn restore(&self, mut store: impl AsContextMut, memory: &Memory) -> wasmtime::Result<()> {
        let current = memory.data_size(&store) as u64;
        if self.size > current {
            memory.grow(&mut store, (self.size - current).div_ceil(WASM_PAGE))?;
        }
        let data = memory.data_mut(&mut store);
        // Runs of adjacent chunks are made resident in one call each, before they are
        // written, instead of taking a page fault per chunk.
        let (base, len) = (data.as_mut_ptr(), data.len());
        let mut run: Option<(usize, usize)> = None;
        let flush = |(from, to): (usize, usize)| {
            let to = to.min(len);
            if from < to {
                // The run lies within the guest's memory: `populate` checks nothing else.
                populate(base.wrapping_add(from), to - from);
            }
        };
        for (index, _) in self.chunks() {
            let start = index as usize * CHUNK;
            run = match run {
                Some((from, to)) if to == start => Some((from, start + CHUNK)),
                Some(done) => {
                    flush(done);
                    Some((start, start + CHUNK))
                }
                None => Some((start, start + CHUNK)),
            };
        }
        if let Some(done) = run {
            flush(done);
        }
        for (index, bytes) in self.chunks() {
            let start = index as usize * CHUNK;
            let target = data
                .get_mut(start..start + bytes.len())
                .ok_or_else(|| wasmtime::Error::msg("a session image chunk lies outside the guest's memory"))?;
            target.copy_from_slice(bytes);
        }
        Ok(())
    }

    /// `SGMI`, version, size, chunk count, then each chunk's index and bytes
    /// (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// The encoding, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.encoded
    }

    /// Reads what [`MemoryImage::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, ImageError> {
        Self::from_bytes(bytes.to_vec())
    }

    /// [`MemoryImage::decode`], keeping the buffer instead of copying it.
    pub fn from_bytes(encoded: Vec<u8>) -> Result<Self, ImageError> {
        let mut cursor = Cursor(&encoded);
        if cursor.take(4)? != MAGIC {
            return Err(ImageError("it does not start with SGMI".into()));
        }
        let version = cursor.u32()?;
        if version != VERSION {
            return Err(ImageError(format!("version {version}, this sandgate reads {VERSION}")));
        }
        let size = u64::from_le_bytes(cursor.take(8)?.try_into().expect("eight bytes"));
        let count = cursor.u32()? as usize;
        let mut last = None;
        for _ in 0..count {
            let index = cursor.u32()?;
            if last.is_some_and(|last| index <= last) || (index as u64 + 1) * CHUNK as u64 > size {
                return Err(ImageError(format!("chunk {index} is out of order or past the memory's size")));
            }
            last = Some(index);
            cursor.take(CHUNK)?;
        }
        if !cursor.0.is_empty() {
            return Err(ImageError("it has bytes after its last chunk".into()));
        }
        Ok(Self { size, encoded })
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

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        if self.0.len() < n {
            return Err(ImageError("it is cut short".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("four bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_keeps_only_what_changed_and_reads_back() {
        let pristine = vec![7u8; 3 * CHUNK];
        let mut memory = pristine.clone();
        memory.extend_from_slice(&[0u8; 2 * CHUNK]);
        memory[CHUNK + 5] = 1;
        memory[4 * CHUNK] = 9;
        let image = MemoryImage::capture(&memory, &pristine);
        assert_eq!(image.size, 5 * CHUNK as u64);
        assert_eq!(image.chunks().map(|(i, _)| i).collect::<Vec<_>>(), [1, 4]);
        let bytes = image.encode();
        assert_eq!(bytes.len(), image.encoded_len());
        assert_eq!(MemoryImage::decode(&bytes).unwrap(), image);
        assert!(MemoryImage::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(MemoryImage::decode(b"nope").is_err());
        let mut chunks: Vec<(u32, &[u8])> = image.chunks().collect();
        chunks.reverse();
        let swapped = MemoryImage::with_chunks(image.size, chunks.into_iter());
        assert!(MemoryImage::decode(&swapped.encode()).is_err(), "chunks out of order");
        assert_eq!(MemoryImage::from_bytes(image.clone().into_bytes()).unwrap(), image);
        assert_eq!(MemoryImage::decode(&MemoryImage::default().encode()).unwrap(), MemoryImage::default());
    }
}
