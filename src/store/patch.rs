//! Patches: the bytes an execution changed in pages a session's store keeps already.
//!
//! An execution in a small session changes about a dozen pages, and in each of them
//! a few dozen bytes at most (a counter, a pointer, an allocator's free list). The
//! store keeps a session's memory as whole pages (`session_pages`), so writing those
//! pages again costs a dozen 4 KiB rows, each spilling to an overflow page: about 40
//! pages of write-ahead log per execution. A patch keeps only the changed runs, in
//! one small row per execution (`session_patches`).
//!
//! A patch is a sequence of runs, each `page` (u32), `offset` (u16) and `length`
//! (u16), little-endian, then `length` bytes. It applies only to pages the store
//! keeps already, and only to the version of a page written before it: each page row
//! and each patch carries the execution count (`seq`) of the return that wrote it, so
//! a page written whole after a patch is not patched again when the memory is read.
//! The store folds a session's patches into its pages once there are
//! [`COMPACT_COUNT`] of them or [`COMPACT_BYTES`], inside the return that reaches
//! that, so what a session keeps outside its counted pages stays small.

use super::{StoreError, PAGE};

/// The most bytes one page's runs may take in a patch: past it, the page is written
/// whole.
pub const PAGE_LIMIT: usize = PAGE / 4;
/// Patches a session keeps before they are folded into its pages.
pub const COMPACT_COUNT: i64 = 32;
/// Bytes of patches a session keeps before they are folded into its pages.
pub const COMPACT_BYTES: i64 = 64 << 10;

/// A run's header: page, offset, length.
const HEADER: usize = 8;

/// Appends to `patch` the runs where page `page` changed from `old` to `new` (both
/// [`PAGE`] bytes), unless they would take more than [`PAGE_LIMIT`] bytes. Runs
/// closer together than a header are one run. Returns whether the page fits in the
/// patch (it does not when nothing changed: then nothing is appended either).
pub fn diff(page: u32, old: &[u8], new: &[u8], patch: &mut Vec<u8>) -> bool {
    debug_assert_eq!(old.len(), new.len());
    let start = patch.len();
    let mut i = 0;
    let len = old.len().min(new.len());
    while i < len {
        // Skip equal bytes eight at a time.
        if i + 8 <= len && old[i..i + 8] == new[i..i + 8] {
            i += 8;
            continue;
        }
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        // A run from `i` to the last differing byte before `HEADER` equal ones.
        let from = i;
        let mut to = i + 1;
        let mut j = to;
        while j < len && j - to < HEADER {
            if old[j] != new[j] {
                to = j + 1;
            }
            j += 1;
        }
        if patch.len() - start + HEADER + (to - from) > PAGE_LIMIT {
            patch.truncate(start);
            return false;
        }
        patch.extend_from_slice(&page.to_le_bytes());
        patch.extend_from_slice(&(from as u16).to_le_bytes());
        patch.extend_from_slice(&((to - from) as u16).to_le_bytes());
        patch.extend_from_slice(&new[from..to]);
        i = to;
    }
    patch.len() > start
}

/// The runs of `patch`: page, offset and bytes of each.
fn runs(patch: &[u8]) -> impl Iterator<Item = Result<(u32, usize, &[u8]), StoreError>> {
    let mut rest = patch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((header, tail)) = rest.split_first_chunk::<HEADER>() else {
            rest = &[];
            return Some(Err(StoreError("a session's patch ends inside a run's header".into())));
        };
        let page = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let offset = u16::from_le_bytes([header[4], header[5]]) as usize;
        let length = u16::from_le_bytes([header[6], header[7]]) as usize;
        if offset + length > PAGE || length > tail.len() {
            rest = &[];
            return Some(Err(StoreError(format!("a session's patch has a run past page {page}'s end"))));
        }
        let (bytes, tail) = tail.split_at(length);
        rest = tail;
        Some(Ok((page, offset, bytes)))
    })
}

/// The pages `patches` change, each once, by increasing index: those a fold reads.
pub fn touched(patches: &[(i64, Vec<u8>)]) -> Result<Vec<u32>, StoreError> {
    let mut pages = Vec::new();
    for (_, patch) in patches {
        for run in runs(patch) {
            pages.push(run?.0);
        }
    }
    pages.sort_unstable();
    pages.dedup();
    Ok(pages)
}

/// A page as the store keeps it: its index, the `seq` of the return that wrote it,
/// and its bytes.
pub type SeqPage = (u32, i64, Vec<u8>);

/// A session's memory as read from the store: its `pages` (by increasing index)
/// with `patches` applied ([`apply`]), without their `seq`s.
pub fn applied(mut pages: Vec<SeqPage>, patches: &[(i64, Vec<u8>)]) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
    apply(&mut pages, patches)?;
    Ok(pages.into_iter().map(|(page, _, bytes)| (page, bytes)).collect())
}

/// Applies `patches` (each with the `seq` of its return, in increasing order) to
/// `pages` (by increasing index), each run to the page's version written before the
/// patch. A run for a page not in `pages` is an error: a patch is written only for
/// pages the store keeps, and pages are never removed while their session lives.
pub fn apply(pages: &mut [SeqPage], patches: &[(i64, Vec<u8>)]) -> Result<(), StoreError> {
    for (seq, patch) in patches {
        for run in runs(patch) {
            let (page, offset, bytes) = run?;
            let Ok(at) = pages.binary_search_by_key(&page, |(index, _, _)| *index) else {
                return Err(StoreError(format!("a session's patch changes page {page}, which it does not keep")));
            };
            let (_, written, kept) = &mut pages[at];
            if *written < *seq && kept.len() == PAGE {
                kept[offset..offset + bytes.len()].copy_from_slice(bytes);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    #[test]
    fn a_patch_carries_exactly_the_changed_runs() {
        let old = page(1);
        let mut new = old.clone();
        new[0] = 9;
        new[5] = 9; // within a header's length of the first: one run
        new[100..110].fill(7);
        new[PAGE - 1] = 3;
        let mut patch = Vec::new();
        assert!(diff(4, &old, &new, &mut patch));
        assert_eq!(patch.len(), 3 * HEADER + 6 + 10 + 1);
        let mut pages = vec![(4, 0, old.clone())];
        apply(&mut pages, &[(1, patch.clone())]).unwrap();
        assert_eq!(pages[0].2, new);
        assert_eq!(touched(&[(1, patch.clone()), (2, patch.clone())]).unwrap(), vec![4]);
        // Nothing changed: nothing to patch.
        let mut empty = Vec::new();
        assert!(!diff(4, &old, &old, &mut empty));
        assert!(empty.is_empty());
    }

    #[test]
    fn a_page_changed_throughout_is_written_whole() {
        let old = page(1);
        let new: Vec<u8> = (0..PAGE).map(|i| (i % 2) as u8 * 200).collect();
        let mut patch = vec![42];
        assert!(!diff(0, &old, &new, &mut patch));
        assert_eq!(patch, vec![42], "what was there before stays");
    }

    #[test]
    fn a_patch_skips_pages_written_whole_after_it() {
        let mut newer = page(5);
        newer[0] = 6;
        let mut changed = page(1);
        changed[10] = 2;
        let mut patch = Vec::new();
        assert!(diff(2, &page(1), &changed, &mut patch));
        // Page 2 was written whole by the return of seq 3, after the patch of seq 2.
        let mut pages = vec![(2, 3, newer.clone())];
        apply(&mut pages, &[(2, patch.clone())]).unwrap();
        assert_eq!(pages[0].2, newer);
        // And a patch for a page the store does not keep is refused.
        let mut other = vec![(3, 0, page(0))];
        assert!(apply(&mut other, &[(2, patch)]).is_err());
    }

    #[test]
    fn a_damaged_patch_is_an_error_not_a_panic() {
        let mut pages = vec![(0, 0, page(0))];
        for bad in [vec![0u8; 3], [0u32.to_le_bytes().as_slice(), &4095u16.to_le_bytes(), &2u16.to_le_bytes()].concat()]
        {
            assert!(apply(&mut pages, &[(1, bad)]).is_err());
        }
    }
}
