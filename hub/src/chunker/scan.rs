//! The search for candidate cut points in a range of one block, on a worker: the gear hash of
//! the `window` bytes ending at each position, several lanes side by side.

use std::ops::Range;
use std::sync::LazyLock;

use super::{Block, GEAR, step};

/// A scan that finds more than one candidate per this many positions leaves its range to the
/// walk instead of listing them (bounds the lists' memory to 1/32 of the bytes scanned).
const DENSE: usize = 256;

/// Lanes of [`scan`], and the bytes each steps at a time.
const LANES: usize = 2;
const GROUP: usize = 4;

/// A range is split into lanes only if each is at least this long.
const LANE_MIN: usize = 256;

/// The file positions in `range` (of `block`'s bytes) where the gear hash of the `window`
/// bytes ending there passes `mask`, in order; `None` if there are more than one per [`DENSE`]
/// positions. The range is cut in [`LANES`] parts hashed side by side (see [`lanes`]).
pub(super) fn scan(block: &Block, range: Range<usize>, window: usize, mask: u64) -> Option<Vec<u64>> {
    let gear: &[u64; 256] = &GEAR;
    let limit = range.len() / DENSE + 1;
    // Indices into `block.data`, which holds `block.lookback` bytes before position 0.
    let (from, to) = (block.lookback + range.start, block.lookback + range.end);
    let data = &block.data[..to];
    let position = |index: usize| block.start + (index - block.lookback) as u64;
    let warm = |at: usize| data[at.saturating_sub(window)..at].iter().fold(0u64, |h, &b| step(gear, h, b));
    let mut found: [Vec<u64>; LANES] = Default::default();
    let mut count = 0;
    // Lanes of a multiple of `GROUP` bytes.
    let part = if to - from >= LANES * LANE_MIN { (to - from) / (LANES * GROUP) * GROUP } else { 0 };
    let starts: [usize; LANES] = std::array::from_fn(|lane| from + lane * part);
    let mut hashes = starts.map(warm);
    if part > 0 {
        let parts = starts.map(|start| &data[start..start + part]);
        let mut i = 0;
        loop {
            i = lanes(&GEARS, parts, &mut hashes, mask, i);
            if i >= part {
                break;
            }
            // A lane passes at `i`: record every lane that does, then go on one byte at a
            // time to the next group, where `lanes` takes over again.
            let shift = (GROUP - 1 - i % GROUP) as u32;
            for hash in &mut hashes {
                *hash >>= shift;
            }
            loop {
                for (lane, hash) in hashes.iter().enumerate() {
                    if hash & mask == 0 {
                        found[lane].push(position(starts[lane] + i));
                        count += 1;
                    }
                }
                if count > limit {
                    return None;
                }
                i += 1;
                if i % GROUP == 0 {
                    break;
                }
                for (hash, part) in hashes.iter_mut().zip(parts) {
                    *hash = step(gear, *hash, part[i]);
                }
            }
        }
    }
    // The last lane goes on alone over what the lanes leave (all of a short range).
    let rest = from + LANES * part;
    let mut hash = hashes[LANES - 1];
    for (i, &b) in data[rest..to].iter().enumerate() {
        hash = step(gear, hash, b);
        if hash & mask == 0 {
            found[LANES - 1].push(position(rest + i));
            count += 1;
            if count > limit {
                return None;
            }
        }
    }
    let mut found = found.into_iter();
    let mut all = found.next().unwrap_or_default();
    all.reserve(count - all.len());
    found.for_each(|lane| all.extend(lane));
    Some(all)
}

/// FastCDC's gear table shifted left by 0 to `GROUP - 1` bits.
static GEARS: LazyLock<[[u64; 256]; GROUP]> = LazyLock::new(|| std::array::from_fn(|k| GEAR.map(|g| g << k)));

/// Steps one gear hash per lane (lanes of one length, a multiple of [`GROUP`]), side by side,
/// from index `i` (a multiple of `GROUP`) until one passes `mask` at some index (returned) or
/// the lanes end (their length is returned). Side by side, because each hash is a chain of
/// dependent additions and independent chains keep the core busy; a group of bytes at a time,
/// to shift once per group: each byte's entry is added already shifted, so after the `j`-th
/// byte of a group the hashes hold the hash shifted left by `GROUP - 1 - j`, tested against
/// the mask shifted alike, and that is how they are left at a returned index (bits shifted out
/// are above every mask). Kept apart from [`scan`] so that its variables stay in registers,
/// and written out plainly so that test builds (not optimised) run it fast enough.
#[inline(never)]
fn lanes(
    gears: &[[u64; 256]; GROUP],
    parts: [&[u8]; LANES],
    hashes: &mut [u64; LANES],
    mask: u64,
    mut i: usize,
) -> usize {
    let [a, b] = parts;
    let n = a.len().min(b.len()) / GROUP * GROUP;
    let [g0, g1, g2, g3] = gears;
    let (m1, m2, m3) = (mask << 1, mask << 2, mask << 3);
    let [mut x, mut y] = *hashes;
    let groups = a[i.min(n)..n].chunks_exact(GROUP).zip(b[i.min(n)..n].chunks_exact(GROUP));
    for (ga, gb) in groups {
        x = (x << 4).wrapping_add(g3[ga[0] as usize]);
        y = (y << 4).wrapping_add(g3[gb[0] as usize]);
        if (x & m3 == 0) | (y & m3 == 0) {
            break;
        }
        x = x.wrapping_add(g2[ga[1] as usize]);
        y = y.wrapping_add(g2[gb[1] as usize]);
        if (x & m2 == 0) | (y & m2 == 0) {
            i += 1;
            break;
        }
        x = x.wrapping_add(g1[ga[2] as usize]);
        y = y.wrapping_add(g1[gb[2] as usize]);
        if (x & m1 == 0) | (y & m1 == 0) {
            i += 2;
            break;
        }
        x = x.wrapping_add(g0[ga[3] as usize]);
        y = y.wrapping_add(g0[gb[3] as usize]);
        if (x & mask == 0) | (y & mask == 0) {
            i += 3;
            break;
        }
        i += GROUP;
    }
    *hashes = [x, y];
    i
}
