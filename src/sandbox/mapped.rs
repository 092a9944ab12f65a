//! Session memories mapped from a file instead of copied (Linux).
//!
//! A session's memory can be tens of megabytes. Copying it into a fresh instance
//! before each execution, and comparing and copying it out after, costs milliseconds
//! for an execution that touches a few pages. Here a guest's fresh memory lives in a
//! file ([`Pristine`], a `memfd`) and a session's own pages in a sparse file of its
//! own ([`MemoryFile`]), and an execution maps both privately (copy-on-write) where
//! its linear memory lies: restoring is an `mmap` for the fresh memory and one per
//! run of the session's pages, pages are read only when the code touches them, and
//! the pages it wrote are the ones the kernel had to copy, which `/proc/self/pagemap`
//! lists (present, and no longer backed by a file). Capturing reads only those pages.
//! An idle session's file takes only the pages it changed.
//!
//! Wasmtime's pooling allocator owns its own mappings, so session executions run on
//! a second engine whose linear memories come from [`MappedMemories`] (plain
//! reservations this module can map over), and on a variant of the guest whose
//! active data segments are emptied ([`without_active_data`]): the file already
//! holds everything those segments would write, and writing them again would both
//! cost the copy and overwrite the session's state.
//!
//! The instance an execution ran in can also stay, its memory mapped, for the
//! session's next execution (`super::Warm`); then a [`WriteTracker`] says which pages
//! that execution wrote, since they are all the memory's own copies already.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

use super::image::{MemoryImage, CHUNK};

const PAGE: usize = CHUNK;

/// `wasm` with every active data segment emptied (same count, same offsets), and the
/// memory those segments describe: its initial size, with their bytes in place.
/// Passive segments are kept as they are.
pub fn without_active_data(wasm: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    use wasmparser::{DataKind, Operator, Parser, Payload};
    let mut module = wasm_encoder::Module::new();
    let mut memory = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        match &payload {
            Payload::MemorySection(reader) => {
                for ty in reader.clone() {
                    let ty = ty?;
                    if memory.is_empty() {
                        memory = vec![0u8; (ty.initial as usize) << 16];
                    }
                }
            }
            Payload::DataSection(reader) => {
                let mut section = wasm_encoder::DataSection::new();
                for segment in reader.clone() {
                    let segment = segment?;
                    match segment.kind {
                        DataKind::Passive => {
                            section.passive(segment.data.iter().copied());
                        }
                        DataKind::Active { memory_index, offset_expr } => {
                            let Ok(Operator::I32Const { value }) = offset_expr.get_operators_reader().read() else {
                                anyhow::bail!("a data segment's offset is not a constant");
                            };
                            let start = value as u32 as usize;
                            let target = memory
                                .get_mut(start..start + segment.data.len())
                                .ok_or_else(|| anyhow::anyhow!("a data segment lies outside the initial memory"))?;
                            target.copy_from_slice(segment.data);
                            section.active(
                                memory_index,
                                &wasm_encoder::ConstExpr::i32_const(value),
                                std::iter::empty(),
                            );
                        }
                    }
                }
                module.section(&section);
                continue;
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            module.section(&wasm_encoder::RawSection { id, data: &wasm[range] });
        }
    }
    Ok((module.finish(), memory))
}

/// How many mutable globals `wasm` defines or imports.
pub fn mutable_globals(wasm: &[u8]) -> anyhow::Result<usize> {
    use wasmparser::{Parser, Payload, TypeRef};
    let mut count = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::GlobalSection(reader) => {
                for global in reader {
                    count += usize::from(global?.ty.mutable);
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let TypeRef::Global(ty) = import?.ty {
                        count += usize::from(ty.mutable);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(count)
}

/// A guest's fresh memory, in a file every session's memory maps beneath its own
/// pages.
#[derive(Debug)]
pub struct Pristine {
    file: File,
    bytes: Vec<u8>,
}

impl Pristine {
    /// `bytes` (a whole number of pages) in a file of their own.
    pub fn new(bytes: Vec<u8>) -> io::Result<Self> {
        let file = File::from(rustix::fs::memfd_create("sandgate-pristine", rustix::fs::MemfdFlags::CLOEXEC)?);
        file.write_all_at(&bytes, 0)?;
        Ok(Self { file, bytes })
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The pages of `memory` that differ from this fresh memory (zeros past its end):
    /// what a paused execution keeps.
    pub fn changed_pages(&self, memory: &[u8]) -> Vec<u32> {
        memory
            .chunks_exact(PAGE)
            .enumerate()
            .filter(|(index, bytes)| *bytes != self.page(*index))
            .map(|(index, _)| index as u32)
            .collect()
    }

    /// Page `index` of it; zeros past its end.
    fn page(&self, index: usize) -> &[u8] {
        const ZEROS: [u8; PAGE] = [0; PAGE];
        self.bytes.get(index * PAGE..(index + 1) * PAGE).unwrap_or(&ZEROS)
    }
}

/// Fewer pages than this between two runs of a session's own pages are filled in
/// its file (with what the memory holds there, the pristine pages), so mapping it
/// takes one `mmap` per run and runs are at least this far apart.
const GAP: usize = 16;

/// Runs a session's file is mapped in at most: past this, the smallest gaps are
/// filled too. Each run is a mapping of the process while the session runs, and a
/// process has a fixed number of them (`vm.max_map_count`, 65,530 by default); code
/// that scatters its writes must not be able to use them up.
pub const MAX_RUNS: usize = 64;

/// A session's memory: a fresh guest's ([`Pristine`]) with the session's own pages
/// over it, those in a file of their own (anonymous, in memory, sparse: only the
/// pages it holds take memory).
#[derive(Debug)]
pub struct MemoryFile {
    pristine: Arc<Pristine>,
    file: File,
    state: Mutex<Held>,
    /// The instance the last execution over the file ran in, kept mapped (see
    /// [`super::Warm`]).
    warm: Mutex<Kept>,
}

/// An instance kept with a session's memory: pending from the end of the execution
/// that ran in it until its pages are written into the file ([`MemoryFile::apply`]:
/// the store has them), and only then ready for the next execution. One whose pages
/// never go back (the execution failed after all, or the store did not take them) is
/// never used: its memory is ahead of the session's.
#[derive(Debug, Default)]
enum Kept {
    #[default]
    None,
    Pending(Box<super::Warm>),
    Ready(Box<super::Warm>),
}

/// A set of page indices, a bit each.
#[derive(Clone, Debug, Default)]
pub struct PageSet {
    words: Vec<u64>,
    len: u64,
}

impl PageSet {
    pub fn contains(&self, page: usize) -> bool {
        self.words.get(page / 64).is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    pub fn insert(&mut self, page: usize) {
        if self.words.len() <= page / 64 {
            self.words.resize(page / 64 + 1, 0);
        }
        if !self.contains(page) {
            self.words[page / 64] |= 1 << (page % 64);
            self.len += 1;
        }
    }

    /// How many pages it holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a [`MemoryFile`] holds.
#[derive(Debug)]
struct Held {
    /// The memory's size in bytes; the file's length.
    size: u64,
    /// The pages the file holds.
    pages: PageSet,
    /// The pages the last execution over the file wrote, as runs: the next one
    /// likely writes them again, so they are copied when the file is mapped.
    hot: Vec<(usize, usize)>,
}

impl Held {
    /// The runs of held pages, as `[start, end)` page ranges.
    fn runs(&self) -> Vec<(usize, usize)> {
        let total = self.size as usize / PAGE;
        runs((0..total).filter(|&page| self.pages.contains(page)))
    }
}

/// Ascending page indices as runs of consecutive pages, `[start, end)`.
fn runs(pages: impl IntoIterator<Item = usize>) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some(run) if run.1 == page => run.1 = page + 1,
            _ => runs.push((page, page + 1)),
        }
    }
    runs
}

impl MemoryFile {
    /// A memory of `size` bytes (at least `pristine`'s): `pristine`, with `pages`
    /// (each a page index and its [`CHUNK`] bytes) over it.
    pub fn create<'a>(
        pristine: Arc<Pristine>,
        size: u64,
        pages: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> io::Result<Self> {
        let file = File::from(rustix::fs::memfd_create("sandgate-session", rustix::fs::MemfdFlags::CLOEXEC)?);
        let size = size.max(pristine.len() as u64);
        file.set_len(size)?;
        let held = Held { size, pages: PageSet::default(), hot: Vec::new() };
        let this = Self { pristine, file, state: Mutex::new(held), warm: Mutex::default() };
        this.write(size, pages)?;
        Ok(this)
    }

    /// The memory's size in bytes.
    pub fn size(&self) -> u64 {
        self.held().size
    }

    /// Bytes of the pages the file holds: the memory it takes.
    pub fn held_bytes(&self) -> u64 {
        self.held().pages.len() * PAGE as u64
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads page `index` of the memory as it is now into `page` (4 KiB);
    /// `false` when the memory ends before it.
    pub fn read_page(&self, index: u32, page: &mut [u8]) -> io::Result<bool> {
        let held = self.held();
        let index = index as usize;
        if (index + 1) * PAGE > held.size as usize {
            return Ok(false);
        }
        if held.pages.contains(index) {
            self.file.read_exact_at(page, (index * PAGE) as u64)?;
        } else if index < self.pristine.len() / PAGE {
            page.copy_from_slice(self.pristine.page(index));
        } else {
            page.fill(0);
        }
        Ok(true)
    }

    /// Writes `image`'s chunks over the memory, growing it to the image's size: the
    /// pages the last execution changed, once the store has them, which makes the
    /// instance it ran in (if it was kept) ready for the next.
    pub fn apply(&self, image: &MemoryImage) -> io::Result<()> {
        self.write(image.size, image.chunks())?;
        let mut warm = self.kept();
        if let Kept::Pending(instance) = std::mem::take(&mut *warm) {
            *warm = Kept::Ready(instance);
        }
        Ok(())
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.warm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `instance`, which an execution over the file just ran in, pending until
    /// its pages are applied.
    pub(super) fn keep(&self, instance: super::Warm) {
        *self.kept() = Kept::Pending(Box::new(instance));
    }

    /// The instance kept with the memory, when it is ready; one still pending is
    /// dropped.
    pub(super) fn take_kept(&self) -> Option<super::Warm> {
        match std::mem::take(&mut *self.kept()) {
            Kept::Ready(instance) => Some(*instance),
            Kept::None | Kept::Pending(_) => None,
        }
    }

    /// Whether an instance is kept with the memory, ready (it holds a file
    /// descriptor and its memory's pages); one still pending (its pages never went
    /// back) is dropped.
    pub fn settle_instance(&self) -> bool {
        let mut kept = self.kept();
        if matches!(*kept, Kept::Pending(_)) {
            *kept = Kept::None;
        }
        matches!(*kept, Kept::Ready(_))
    }

    /// Drops the instance kept with the memory, if any.
    pub fn drop_instance(&self) {
        *self.kept() = Kept::None;
    }

    fn write<'a>(&self, size: u64, pages: impl IntoIterator<Item = (u32, &'a [u8])>) -> io::Result<()> {
        let mut held = self.held();
        if size > held.size {
            self.file.set_len(size)?;
            held.size = size;
        }
        for (index, bytes) in pages {
            if (index as u64 + 1) * CHUNK as u64 > held.size || bytes.len() != CHUNK {
                return Err(io::Error::other(format!("page {index} lies outside the memory's {} bytes", held.size)));
            }
            self.file.write_all_at(bytes, index as u64 * CHUNK as u64)?;
            held.pages.insert(index as usize);
        }
        // Short gaps between runs are filled with what the memory holds there, and
        // the smallest others while there are too many runs.
        let runs = held.runs();
        let mut gaps: Vec<(usize, usize)> = runs.windows(2).map(|pair| (pair[0].1, pair[1].0)).collect();
        gaps.sort_by_key(|&(end, next)| (next - end, end));
        let short = gaps.iter().take_while(|&&(end, next)| next - end < GAP).count();
        let fill = short.max((runs.len().saturating_sub(MAX_RUNS)).min(gaps.len()));
        for &(end, next) in &gaps[..fill] {
            for page in end..next {
                // Past the fresh memory the file's hole reads as the zeros it holds.
                if page < self.pristine.len() / PAGE {
                    self.file.write_all_at(self.pristine.page(page), (page * PAGE) as u64)?;
                }
                held.pages.insert(page);
            }
        }
        Ok(())
    }

    /// The pages of `memory` (mapped from this file by [`MemoryFile::map_over`]) that
    /// differ from what the file and the fresh memory hold: what [`written_pages`]
    /// finds, by comparing every page instead, where `/proc/self/pagemap` cannot be
    /// read (some sandboxed kernels do not have it). Milliseconds for a large memory.
    pub fn changed_pages(&self, memory: &[u8]) -> io::Result<Vec<u32>> {
        let held = self.held();
        let mut page = vec![0u8; PAGE];
        let mut changed = Vec::new();
        for (index, bytes) in memory.chunks_exact(PAGE).enumerate() {
            let before: &[u8] = if held.pages.contains(index) && index * PAGE < held.size as usize {
                self.file.read_exact_at(&mut page, (index * PAGE) as u64)?;
                &page
            } else {
                self.pristine.page(index)
            };
            if bytes != before {
                changed.push(index as u32);
            }
        }
        Ok(changed)
    }

    /// How many runs of its own pages the file holds: the mappings it takes.
    pub fn runs(&self) -> usize {
        self.held().runs().len()
    }

    /// Maps the memory privately over `memory`'s first bytes (the memory's size):
    /// the pristine file, then each run of the session's own pages from its file, so
    /// the memory reads as the session's and the pages it writes are its own copies.
    /// Past the pristine memory, pages the file does not hold stay as the fresh
    /// instance has them: zeros.
    ///
    /// # Safety
    /// `memory` must be the linear memory of a fresh instance of the session engine
    /// (see [`MappedMemories`]), at least the memory's size, and nothing may hold a
    /// reference into it while this runs.
    pub unsafe fn map_over(&self, memory: &mut [u8]) -> io::Result<()> {
        let held = self.held();
        if (memory.len() as u64) < held.size {
            return Err(io::Error::other("the instance's memory is smaller than the session's"));
        }
        let base = memory.as_mut_ptr();
        let map = |file: &File, start: usize, len: usize| {
            // SAFETY: [base + start, base + start + len) lies within `memory`, which is
            // ours (the caller's contract); MAP_FIXED replaces its pages with the
            // file's at the same offset.
            unsafe {
                rustix::mm::mmap(
                    base.add(start).cast(),
                    len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                    file,
                    start as u64,
                )
            }
            .map(drop)
        };
        if !self.pristine.is_empty() {
            map(&self.pristine.file, 0, self.pristine.len())?;
        }
        for (start, end) in held.runs() {
            map(&self.file, start * PAGE, (end - start) * PAGE)?;
        }
        // The pages the last execution wrote are copied now, before the code reads
        // them: a page the code reads first is mapped read-only, and writing it then
        // takes a second fault whose TLB flush interrupts every other core.
        let pages = memory.len() / PAGE;
        for &(start, end) in &held.hot {
            let end = end.min(pages);
            if start < end {
                // SAFETY: [start, end) pages lie within `memory`, mapped read-write just
                // above; populating only faults them in as they would be on first write.
                let _ = unsafe {
                    rustix::mm::madvise(
                        base.add(start * PAGE).cast(),
                        (end - start) * PAGE,
                        rustix::mm::Advice::LinuxPopulateWrite,
                    )
                };
            }
        }
        Ok(())
    }

    /// Notes `pages` (ascending) as the pages an execution over the file wrote.
    pub fn written(&self, pages: &[u32]) {
        self.held().hot = runs(pages.iter().map(|&page| page as usize));
    }
}

/// The pages of `memory` written since it was mapped by [`MemoryFile::map_over`] (or
/// since its reservation was made): present and not a page of a file, or swapped out.
/// Pages past the file that were only read count too (they hold zeros); nothing
/// written is missed.
pub fn written_pages(memory: &[u8]) -> io::Result<Vec<u32>> {
    let pagemap = pagemap()?;
    let first = memory.as_ptr() as usize / PAGE;
    let count = memory.len() / PAGE;
    let mut written = Vec::new();
    let mut entries = vec![0u8; 8 * 4096];
    let mut done = 0;
    while done < count {
        let batch = (count - done).min(4096);
        let buffer = &mut entries[..batch * 8];
        pagemap.read_exact_at(buffer, ((first + done) * 8) as u64)?;
        for (i, entry) in buffer.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().expect("eight bytes"));
            let present = entry & (1 << 63) != 0;
            // Only a page of its own (written, so copied) can be swapped out: the
            // file's pages are dropped and read again instead.
            let swapped = entry & (1 << 62) != 0;
            let file_or_shared = entry & (1 << 61) != 0;
            if swapped || (present && !file_or_shared) {
                written.push((done + i) as u32);
            }
        }
        done += batch;
    }
    Ok(written)
}

/// The pages a memory kept mapped between executions has written since its pages
/// were last protected, as the kernel tracks them: the memory is registered with a
/// userfaultfd in asynchronous write-protect mode, so a write to a protected page
/// takes a minor fault the kernel resolves itself (no thread of ours wakes) and
/// leaves the page unprotected, which `PAGEMAP_SCAN` lists (when mapped: a page
/// never touched is not, and holds what the memory held there). Protecting pages again
/// ([`WriteTracker::protect`]) flushes them from every core's TLB, which interrupts
/// the other cores: the caller does it off the execution's path, before the memory
/// is next used. A page not protected is listed whether or not it was written (a
/// page first mapped since, only read, holds what the memory held there, which the
/// caller finds unchanged): nothing written is ever missed.
///
/// Linux 6.7 or later. Where the kernel or its settings refuse (an older kernel, or
/// userfaultfd not allowed), [`WriteTracker::new`] fails, and the memory is mapped
/// afresh for each execution instead.
#[derive(Debug)]
pub struct WriteTracker {
    uffd: std::os::fd::OwnedFd,
    /// The memory's first byte.
    base: usize,
    /// Bytes from `base` registered with `uffd`.
    registered: usize,
}

mod uffd {
    //! The kernel's structures and request numbers for userfaultfd and
    //! `PAGEMAP_SCAN` (`linux/userfaultfd.h`, `linux/fs.h`).
    use rustix::ioctl::{opcode, Opcode};

    pub const API: u64 = 0xAA;
    pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
    pub const REGISTER_MODE_WP: u64 = 1 << 1;
    pub const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    /// `UFFD_USER_MODE_ONLY`: allowed to unprivileged processes where
    /// `vm.unprivileged_userfaultfd` is 0 (the default).
    pub const USER_MODE_ONLY: u32 = 1;

    #[repr(C)]
    pub struct Api {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    pub struct Range {
        pub start: u64,
        pub len: u64,
    }

    #[repr(C)]
    pub struct Register {
        pub range: Range,
        pub mode: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    pub struct WriteProtect {
        pub range: Range,
        pub mode: u64,
    }

    pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
    pub const PAGE_IS_PRESENT: u64 = 1 << 3;
    pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

    #[repr(C)]
    pub struct ScanArg {
        pub size: u64,
        pub flags: u64,
        pub start: u64,
        pub end: u64,
        pub walk_end: u64,
        pub vec: u64,
        pub vec_len: u64,
        pub max_pages: u64,
        pub category_inverted: u64,
        pub category_mask: u64,
        pub category_anyof_mask: u64,
        pub return_mask: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Region {
        pub start: u64,
        pub end: u64,
        pub categories: u64,
    }

    pub const API_OP: Opcode = opcode::read_write::<Api>(0xAA, 0x3F);
    pub const REGISTER_OP: Opcode = opcode::read_write::<Register>(0xAA, 0x00);
    pub const WRITEPROTECT_OP: Opcode = opcode::read_write::<WriteProtect>(0xAA, 0x06);
    pub const SCAN_OP: Opcode = opcode::read_write::<ScanArg>(b'f', 16);
}

/// `/proc/self/pagemap`, opened once: its ioctls and reads at an offset share it
/// safely across threads.
fn pagemap() -> io::Result<&'static File> {
    static PAGEMAP: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    match PAGEMAP.get() {
        Some(file) => Ok(file),
        None => {
            let file = File::open("/proc/self/pagemap")?;
            Ok(PAGEMAP.get_or_init(|| file))
        }
    }
}

impl WriteTracker {
    /// Starts tracking the writes to `memory`: [`WriteTracker::protect`] it whole
    /// before it is next written. Tracking changes nothing the program sees: the
    /// kernel resolves every fault itself, and its requests act only on the mappings
    /// registered here (once `memory` is unmapped, they fail).
    pub fn new(memory: &[u8]) -> io::Result<Self> {
        use rustix::ioctl::{ioctl, Updater};
        let flags = rustix::mm::UserfaultfdFlags::CLOEXEC
            | rustix::mm::UserfaultfdFlags::NONBLOCK
            | rustix::mm::UserfaultfdFlags::from_bits_retain(uffd::USER_MODE_ONLY);
        // SAFETY: a new descriptor; nothing is registered with it yet.
        let uffd = unsafe { rustix::mm::userfaultfd(flags) }?;
        let mut api = uffd::Api { api: uffd::API, features: uffd::FEATURE_WP_ASYNC, ioctls: 0 };
        // SAFETY: `Api` is the `uffdio_api` this request reads and writes.
        unsafe { ioctl(&uffd, Updater::<{ uffd::API_OP }, _>::new(&mut api)) }?;
        let mut tracker = Self { uffd, base: memory.as_ptr() as usize, registered: 0 };
        tracker.register(memory.len())?;
        Ok(tracker)
    }

    /// Protects `pages` of the memory (ascending; all of its registered bytes when
    /// `None`), so that only pages written after this are listed.
    pub fn protect(&self, pages: Option<&[u32]>) -> io::Result<()> {
        use rustix::ioctl::{ioctl, Updater};
        let runs = match pages {
            Some(pages) => runs(pages.iter().map(|&page| page as usize)),
            None => vec![(0, self.registered / PAGE)],
        };
        for (start, end) in runs {
            let mut protect = uffd::WriteProtect {
                range: uffd::Range { start: (self.base + start * PAGE) as u64, len: ((end - start) * PAGE) as u64 },
                mode: uffd::WRITEPROTECT_MODE_WP,
            };
            // SAFETY: `WriteProtect` is the `uffdio_writeprotect` this request takes.
            unsafe { ioctl(&self.uffd, Updater::<{ uffd::WRITEPROTECT_OP }, _>::new(&mut protect)) }?;
        }
        Ok(())
    }

    /// Registers the memory up to `len` bytes (it grew since): pages written there
    /// since are listed, since they are not protected.
    fn register(&mut self, len: usize) -> io::Result<()> {
        use rustix::ioctl::{ioctl, Updater};
        if len <= self.registered {
            return Ok(());
        }
        let mut register = uffd::Register {
            range: uffd::Range { start: (self.base + self.registered) as u64, len: (len - self.registered) as u64 },
            mode: uffd::REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: `Register` is the `uffdio_register` this request reads and writes.
        unsafe { ioctl(&self.uffd, Updater::<{ uffd::REGISTER_OP }, _>::new(&mut register)) }?;
        self.registered = len;
        Ok(())
    }

    /// The pages of `memory` (the one the tracker was made for, perhaps grown since)
    /// that are mapped and not protected (written since they were), ascending. A
    /// page not mapped holds what the memory held there: it was never touched.
    pub fn written(&mut self, memory: &[u8]) -> io::Result<Vec<u32>> {
        use rustix::ioctl::{ioctl, Updater};
        if memory.as_ptr() as usize != self.base {
            return Err(io::Error::other("a write tracker is for one memory"));
        }
        self.register(memory.len())?;
        let pagemap = pagemap()?;
        let end = (self.base + memory.len()) as u64;
        let mut regions = [uffd::Region::default(); 64];
        let mut written = Vec::new();
        let mut start = self.base as u64;
        while start < end {
            regions.fill(uffd::Region::default());
            let mut scan = uffd::ScanArg {
                size: std::mem::size_of::<uffd::ScanArg>() as u64,
                flags: 0,
                start,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: uffd::PAGE_IS_WRITTEN,
                category_anyof_mask: uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_SWAPPED,
                return_mask: uffd::PAGE_IS_WRITTEN,
            };
            // SAFETY: `ScanArg` is the `pm_scan_arg` this request takes, its `vec` the
            // `regions` array, alive and of `vec_len` entries, that the kernel fills.
            unsafe { ioctl(pagemap, Updater::<{ uffd::SCAN_OP }, _>::new(&mut scan)) }?;
            for region in regions.iter().take_while(|region| region.end != 0) {
                let first = (region.start as usize - self.base) / PAGE;
                let last = (region.end as usize - self.base) / PAGE;
                written.extend((first..last).map(|page| page as u32));
            }
            if scan.walk_end <= start {
                return Err(io::Error::other("the page scan made no progress"));
            }
            start = scan.walk_end;
        }
        Ok(written)
    }
}

/// Makes the linear memories of the session engine: a reservation of the size and
/// guard wasmtime asks for, inaccessible past the memory's current size, that
/// [`MemoryFile::map_over`] can map a session's file over.
#[derive(Debug, Default)]
pub struct MappedMemories;

// SAFETY: each memory is a fresh private reservation; see `Reservation`.
unsafe impl MemoryCreator for MappedMemories {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let capacity = reserved_size_in_bytes.or(maximum).ok_or("the session engine reserves memories")?;
        let total = capacity.checked_add(guard_size_in_bytes).ok_or("reservation overflow")?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| format!("cannot reserve a session memory: {e}"))?;
        // Small pages only: a huge page written at one byte would count as 512
        // written pages in `written_pages`. Only a hint; failure changes nothing else.
        // SAFETY: the range is the reservation just made.
        let _ = unsafe { rustix::mm::madvise(base, total, rustix::mm::Advice::LinuxNoHugepage) };
        let mut memory = Reservation { base: base as usize, size: 0, capacity, total };
        memory.grow_to(minimum).map_err(|e| e.to_string())?;
        Ok(Box::new(memory))
    }
}

/// One linear memory: `total` bytes reserved at `base`, of which the first `size`
/// are readable and writable.
struct Reservation {
    base: usize,
    size: usize,
    capacity: usize,
    total: usize,
}

// SAFETY: the bytes before `size` are mapped read-write and zero until written (or
// mapped from a session's file, which is what the memory then holds); everything
// after them, guard included, is inaccessible; the base never moves.
unsafe impl LinearMemory for Reservation {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.capacity {
            return Err(wasmtime::Error::msg("a session memory cannot grow past its reservation"));
        }
        if new_size > self.size {
            let start = self.size.div_ceil(PAGE) * PAGE;
            let end = new_size.div_ceil(PAGE) * PAGE;
            if end > start {
                // SAFETY: [start, end) lies within the reservation.
                unsafe {
                    rustix::mm::mprotect(
                        (self.base + start) as *mut std::ffi::c_void,
                        end - start,
                        MprotectFlags::READ | MprotectFlags::WRITE,
                    )
                }
                .map_err(|e| wasmtime::Error::msg(format!("cannot grow a session memory: {e}")))?;
            }
            self.size = new_size;
        }
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the whole reservation, mapped in `new_memory`, and no longer used.
        let _ = unsafe { rustix::mm::munmap(self.base as *mut std::ffi::c_void, self.total) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-page memory of the session engine's kind with `file` mapped over it.
    fn reservation(file: &MemoryFile) -> Box<dyn LinearMemory> {
        let mut memory = MappedMemories
            .new_memory(MemoryType::new(1, None), 64 * PAGE, None, Some(1 << 30), 1 << 20)
            .expect("a reservation");
        memory.grow_to(64 * PAGE).unwrap();
        // SAFETY: the reservation is ours, made just above, grown to 64 pages, and
        // nothing else refers to it.
        unsafe { file.map_over(std::slice::from_raw_parts_mut(memory.as_ptr(), 64 * PAGE)) }.unwrap();
        memory
    }

    fn bytes_of(memory: &mut Box<dyn LinearMemory>) -> &mut [u8] {
        // SAFETY: 64 pages, readable and writable, borrowed with the memory.
        unsafe { std::slice::from_raw_parts_mut(memory.as_ptr(), 64 * PAGE) }
    }

    #[test]
    fn a_file_says_which_pages_it_holds_as_they_are() {
        let mut bytes = vec![0u8; 16 * PAGE];
        bytes[3 * PAGE] = 3;
        let pristine = Arc::new(Pristine::new(bytes.clone()).unwrap());
        let sevens = vec![7u8; PAGE];
        let zeros = vec![0u8; PAGE];
        let file = MemoryFile::create(pristine, 32 * PAGE as u64, [(5, &sevens[..])]).unwrap();
        // Its own pages, the fresh memory's beneath them, zeros past the fresh memory.
        let holds = |index: u32, bytes: &[u8]| {
            let mut page = [0u8; PAGE];
            file.read_page(index, &mut page).unwrap() && page[..] == *bytes
        };
        assert!(holds(5, &sevens) && !holds(5, &zeros));
        assert!(holds(3, &bytes[3 * PAGE..4 * PAGE]) && !holds(3, &zeros));
        assert!(holds(4, &zeros) && !holds(4, &sevens));
        assert!(holds(20, &zeros) && !holds(20, &sevens));
        // Past the memory's size nothing is held yet: such a page always goes.
        assert!(!holds(32, &zeros));
    }

    #[test]
    fn a_mapped_memory_reads_as_the_session_and_lists_only_the_pages_written() {
        let mut bytes = vec![0u8; 16 * PAGE];
        bytes[3 * PAGE] = 3;
        let pristine = Arc::new(Pristine::new(bytes).unwrap());
        let page = vec![7u8; PAGE];
        let file = MemoryFile::create(pristine.clone(), 32 * PAGE as u64, [(5, &page[..])]).unwrap();
        assert_eq!((file.size(), file.held_bytes()), (32 * PAGE as u64, PAGE as u64));
        let outside = MemoryFile::create(pristine.clone(), 16 * PAGE as u64, [(16, &page[..])]);
        assert!(outside.is_err(), "a page past the end");

        let mut memories = reservation(&file);
        let memory = bytes_of(&mut memories);
        assert_eq!((memory[3 * PAGE], memory[5 * PAGE], memory[6 * PAGE]), (3, 7, 0));
        assert!(written_pages(memory).unwrap().is_empty(), "reading the files writes nothing");
        memory[5 * PAGE + 1] = 1;
        memory[9 * PAGE] = 2;
        memory[40 * PAGE] = 4;
        assert_eq!(written_pages(memory).unwrap(), [5, 9, 40]);
        // Past the files, a page read is a page of zeros: it counts, harmlessly.
        assert_eq!(memory[50 * PAGE], 0);
        assert_eq!(written_pages(memory).unwrap(), [5, 9, 40, 50]);
        // Comparing finds what changed (reading every page, so it comes last here).
        assert_eq!(file.changed_pages(memory).unwrap(), [5, 9, 40]);

        // Those pages, written into the file, are what the next mapping reads; the
        // short gap between pages 5 and 9 is filled from the pristine memory, so
        // pages 5 to 9 are one run.
        let written = MemoryImage::from_pages(memory, &[5, 9, 40]);
        file.apply(&written).unwrap();
        assert_eq!(file.size(), 64 * PAGE as u64, "the memory grows");
        assert_eq!(file.held().runs(), [(5, 10), (40, 41)]);
        assert_eq!(file.held_bytes(), 6 * PAGE as u64);
        let mut again = reservation(&file);
        let memory = bytes_of(&mut again);
        assert_eq!((memory[5 * PAGE + 1], memory[9 * PAGE], memory[40 * PAGE], memory[3 * PAGE]), (1, 2, 4, 3));
        assert_eq!(memory[6 * PAGE], 0);
        assert!(written_pages(memory).unwrap().is_empty());
        assert_eq!((memory[41 * PAGE], memory[50 * PAGE]), (0, 0));
    }

    #[test]
    fn a_kept_memory_lists_the_pages_written_since_they_were_protected() {
        let mut bytes = vec![1u8; 16 * PAGE];
        bytes[3 * PAGE] = 3;
        let pristine = Arc::new(Pristine::new(bytes).unwrap());
        let page = vec![7u8; PAGE];
        let file = MemoryFile::create(pristine, 32 * PAGE as u64, [(5, &page[..]), (20, &page[..])]).unwrap();
        let mut memories = reservation(&file);
        let memory = bytes_of(&mut memories);
        // Some pages read and some written before tracking starts.
        assert_eq!((memory[3 * PAGE], memory[5 * PAGE], memory[20 * PAGE], memory[30 * PAGE]), (3, 7, 7, 0));
        memory[4 * PAGE] = 4;
        memory[40 * PAGE] = 4;
        let mut tracker = match WriteTracker::new(memory) {
            Ok(tracker) => tracker,
            Err(error) => panic!("userfaultfd's asynchronous write-protection is refused here: {error}"),
        };
        let unprotected = tracker.written(memory).unwrap();
        // Every page mapped, until protected: those touched, and the fresh memory's
        // the kernel mapped around them.
        for page in [3, 4, 5, 20, 30, 40] {
            assert!(unprotected.contains(&page), "page {page} in {unprotected:?}");
        }
        assert!(unprotected.iter().all(|&page| page < 16 || [20, 30, 40].contains(&page)), "{unprotected:?}");
        tracker.protect(None).unwrap();
        assert_eq!(tracker.written(memory).unwrap(), Vec::<u32>::new(), "nothing written since");
        // Written: pages read before (pristine, own, past the file), one written
        // before, and two never touched (in the file's range and past it).
        memory[3 * PAGE + 1] = 1;
        memory[5 * PAGE + 1] = 1;
        memory[30 * PAGE] = 1;
        memory[40 * PAGE + 2] = 2;
        memory[9 * PAGE] = 9;
        memory[50 * PAGE] = 5;
        // Only read again: a page mapped before tracking started.
        assert_eq!(memory[20 * PAGE], 7);
        let written = tracker.written(memory).unwrap();
        for page in [3, 5, 9, 30, 40, 50] {
            assert!(written.contains(&page), "page {page} in {written:?}");
        }
        assert!(!written.contains(&20) && !written.contains(&4), "{written:?}");
        assert_eq!(tracker.written(memory).unwrap(), written, "listed until protected");
        tracker.protect(Some(&written)).unwrap();
        assert_eq!(tracker.written(memory).unwrap(), Vec::<u32>::new(), "protected again");
        // A page written again is listed again; a page first read is listed too.
        memory[5 * PAGE + 2] = 2;
        assert_eq!(memory[60 * PAGE], 0);
        let written = tracker.written(memory).unwrap();
        assert!(written.contains(&5), "{written:?}");
        assert!(written.iter().all(|&page| page == 5 || page == 60), "{written:?}");
        tracker.protect(Some(&written)).unwrap();
        // The memory grows: what is written in the new part is listed.
        memories.grow_to(80 * PAGE).unwrap();
        // SAFETY: 80 pages now, readable and writable, borrowed with the memory.
        let memory = unsafe { std::slice::from_raw_parts_mut(memories.as_ptr(), 80 * PAGE) };
        memory[70 * PAGE] = 7;
        memory[3 * PAGE + 2] = 2;
        let written = tracker.written(memory).unwrap();
        assert_eq!(written, [3, 70]);
        tracker.protect(Some(&written)).unwrap();
        assert_eq!(tracker.written(memory).unwrap(), Vec::<u32>::new());
        drop(tracker);
    }

    #[test]
    fn scattered_pages_are_mapped_in_a_bounded_number_of_runs() {
        let pristine = Arc::new(Pristine::new(vec![5u8; 64 * PAGE]).unwrap());
        let page = vec![9u8; PAGE];
        // A page in every 20: 410 runs, if nothing joined them.
        let pages: Vec<(u32, &[u8])> = (0..410).map(|i| (i * 20, &page[..])).collect();
        let file = MemoryFile::create(pristine, 8192 * PAGE as u64, pages).unwrap();
        assert_eq!(file.runs(), MAX_RUNS);
        let mut memory = MappedMemories
            .new_memory(MemoryType::new(1, None), 8192 * PAGE, None, Some(1 << 30), 1 << 20)
            .expect("a reservation");
        memory.grow_to(8192 * PAGE).unwrap();
        // SAFETY: the reservation is ours, made just above and grown to 8192 pages.
        let bytes = unsafe { std::slice::from_raw_parts_mut(memory.as_ptr(), 8192 * PAGE) };
        // SAFETY: nothing else refers to it.
        unsafe { file.map_over(bytes) }.unwrap();
        // The session's pages, the fresh memory below them, zeros past it: filling
        // the gaps changed nothing the memory reads.
        for index in [0, 1, 20, 21, 40, 63, 64, 100, 8180, 8181] {
            let expected = if index % 20 == 0 {
                9
            } else if index < 64 {
                5
            } else {
                0
            };
            assert_eq!(bytes[index * PAGE], expected, "page {index}");
        }
        assert!(written_pages(&bytes[..64 * PAGE]).unwrap().is_empty());
    }

    #[test]
    fn emptying_the_data_segments_keeps_the_module_and_its_memory() {
        let (stripped, pristine) = without_active_data(crate::sandbox::engine::GUEST_WASM).unwrap();
        wasmparser::Validator::new().validate_all(&stripped).expect("a valid module");
        assert!(stripped.len() < crate::sandbox::engine::GUEST_WASM.len());
        assert_eq!(pristine.len() % 65_536, 0);
        assert!(pristine.iter().any(|&b| b != 0));
    }
}
