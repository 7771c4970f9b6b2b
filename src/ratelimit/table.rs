//! The table of rate-limit keys that lives in shared memory: open addressing with linear
//! probing over a fixed array, backward-shift deletion, and eviction of idle keys when full.
//! Plain Rust over a slice, so it is tested without Postgres.
use super::window::{Verdict, Window};
use std::hash::{Hash, Hasher};

/// Bytes of a key's name kept for display (the hash identifies the key).
const NAME_BYTES: usize = 63;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Slot {
    /// 0 marks an empty slot; real hashes are never 0. Two u64 rather than a [u64; 2], which
    /// would need 16-byte alignment that Postgres shared memory does not promise.
    hash: [u64; 2],
    name_len: u8,
    name: [u8; NAME_BYTES],
    /// The limit of the latest check, for display.
    limit: u64,
    last_used_us: u64,
    paused_until_us: u64,
    window: Window,
}

impl Slot {
    pub const EMPTY: Slot = Slot {
        hash: [0; 2],
        name_len: 0,
        name: [0; NAME_BYTES],
        limit: 0,
        last_used_us: 0,
        paused_until_us: 0,
        window: Window::EMPTY,
    };

    fn is_empty(&self) -> bool {
        self.hash == [0; 2]
    }

    pub fn name(&self) -> &str {
        let bytes = &self.name[..usize::from(self.name_len)];
        std::str::from_utf8(bytes).unwrap_or("?")
    }

    /// A key nobody needs to remember: nothing counted in its window and no pause ahead.
    fn is_idle(&mut self, now_us: u64) -> bool {
        self.paused_until_us <= now_us && self.window.used(now_us) == 0
    }
}

/// A key: a name and the window its limit is counted over.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    pub name: &'a str,
    pub window_us: u64,
}

impl Key<'_> {
    pub fn hash(&self) -> [u64; 2] {
        let mut sip = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut sip);
        self.window_us.hash(&mut sip);
        // FNV-1a over the same bytes: an independent second half, cheaper than a second SipHash.
        let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.name.bytes().chain(self.window_us.to_le_bytes()) {
            fnv = (fnv ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        // A collision of both would make two keys share one count, which refuses more, never
        // admits more.
        [sip.finish(), fnv.max(1)]
    }
}

/// One limit to check: a key, the most it may admit per window, and what this check would
/// take from it. The key's hash is worked out here, before the caller takes the table's lock.
#[derive(Clone, Copy, Debug)]
pub struct Limit<'a> {
    key: Key<'a>,
    hash: [u64; 2],
    max: u64,
    cost: u64,
}

impl<'a> Limit<'a> {
    pub fn new(key: Key<'a>, max: u64, cost: u64) -> Limit<'a> {
        Limit::hashed(key, key.hash(), max, cost)
    }

    /// A limit whose key's hash the caller worked out before (it must be `key.hash()`).
    pub fn hashed(key: Key<'a>, hash: [u64; 2], max: u64, cost: u64) -> Limit<'a> {
        Limit {
            key,
            hash,
            max,
            cost,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every limit had room; `remaining[i]` is what is left under limit i afterwards.
    Admitted { remaining: Vec<u64> },
    /// Limit `index` refused (paused, or no room); nothing was taken anywhere.
    Refused {
        index: usize,
        retry_after_us: u64,
        remaining: Vec<u64>,
    },
    /// The table is full of keys still counting; nothing was taken.
    Full { retry_after_us: u64 },
}

/// Usage of one key, for the usage view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub name: String,
    pub window_us: u64,
    pub limit: u64,
    pub used: u64,
    pub paused_until_us: u64,
    pub last_used_us: u64,
}

/// The table over a slice whose length is a power of two; at most `max_keys` are live, and
/// `live` counts them (kept beside the slots so a check never has to scan for it).
pub struct Table<'a> {
    slots: &'a mut [Slot],
    max_keys: usize,
    live: &'a mut u64,
}

impl<'a> Table<'a> {
    pub fn new(slots: &'a mut [Slot], max_keys: usize, live: &'a mut u64) -> Table<'a> {
        debug_assert!(slots.len().is_power_of_two() && max_keys < slots.len());
        Table {
            slots,
            max_keys,
            live,
        }
    }

    /// Slots for `max_keys` keys: twice as many, so probe sequences stay short.
    pub fn slots_for(max_keys: usize) -> usize {
        (max_keys.max(1) * 2).next_power_of_two()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn find(&self, hash: [u64; 2]) -> Result<usize, usize> {
        let mut i = hash[0] as usize & self.mask();
        loop {
            let slot = &self.slots[i];
            if slot.is_empty() {
                return Err(i);
            }
            if slot.hash == hash {
                return Ok(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Puts `slot` in the empty slot `empty`, moving no other, and returns where it is.
    fn insert(&mut self, empty: usize, slot: Slot) -> usize {
        self.slots[empty] = slot;
        *self.live += 1;
        empty
    }

    /// Removes slot `hole`, moving later members of its probe run back so lookups still work.
    fn remove(&mut self, mut hole: usize) {
        self.slots[hole] = Slot::EMPTY;
        *self.live -= 1;
        let mut j = (hole + 1) & self.mask();
        while !self.slots[j].is_empty() {
            let home = self.slots[j].hash[0] as usize & self.mask();
            if (j.wrapping_sub(home) & self.mask()) >= (j.wrapping_sub(hole) & self.mask()) {
                self.slots[hole] = self.slots[j];
                self.slots[j] = Slot::EMPTY;
                hole = j;
            }
            j = (j + 1) & self.mask();
        }
    }

    /// Makes room for `needed` new keys by evicting the longest-idle keys whose windows are
    /// empty, never one of `keep`. Err(retry_after) when there are not enough such keys.
    fn make_room(&mut self, needed: usize, keep: &[Limit], now_us: u64) -> Result<(), u64> {
        let free = self.max_keys.saturating_sub(*self.live as usize);
        for _ in free..needed {
            let mut victim: Option<usize> = None;
            let mut soonest_idle = u64::MAX;
            for i in 0..self.slots.len() {
                if self.slots[i].is_empty() || keep.iter().any(|k| k.hash == self.slots[i].hash) {
                    continue;
                }
                if self.slots[i].is_idle(now_us) {
                    if victim
                        .is_none_or(|v| self.slots[i].last_used_us < self.slots[v].last_used_us)
                    {
                        victim = Some(i);
                    }
                } else {
                    let slot = &self.slots[i];
                    let idle_at =
                        (slot.last_used_us + slot.window.window_us() * 2).max(slot.paused_until_us);
                    soonest_idle = soonest_idle.min(idle_at.saturating_sub(now_us).max(1));
                }
            }
            match victim {
                Some(v) => self.remove(v),
                None => return Err(soonest_idle),
            }
        }
        Ok(())
    }

    /// Checks all `limits` at `now_us` as one decision and, when `take` is set and all have
    /// room, takes each one's cost. A refusal at one limit takes nothing at any.
    pub fn check(&mut self, now_us: u64, limits: &[Limit], take: bool) -> Outcome {
        // One lookup per limit serves the check and the take, unless keys have to be made:
        // making room moves slots, so then they are looked up again (an insert moves none).
        let mut found: Vec<Option<usize>> = limits.iter().map(|l| self.find(l.hash).ok()).collect();
        let missing = found.iter().filter(|f| f.is_none()).count();
        if take && missing > 0 {
            if let Err(retry_after_us) = self.make_room(missing, limits, now_us) {
                return Outcome::Full { retry_after_us };
            }
            for (limit, slot) in limits.iter().zip(&mut found) {
                *slot = Some(match self.find(limit.hash) {
                    Ok(i) => i,
                    Err(empty) => self.insert(empty, new_slot(limit.key, limit.hash, now_us)),
                });
            }
        }
        // What each limit has left before this call, and the longest wait any of them imposes.
        let mut before = Vec::with_capacity(limits.len());
        let mut refusal: Option<(usize, u64)> = None;
        for (index, (limit, &slot)) in limits.iter().zip(&found).enumerate() {
            let (used, wait) = match slot {
                Some(i) => {
                    let slot = &mut self.slots[i];
                    let paused_for = slot.paused_until_us.saturating_sub(now_us);
                    let wait = match slot.window.check(now_us, limit.max, limit.cost) {
                        Verdict::Fits => paused_for,
                        Verdict::Refused { retry_after_us } => retry_after_us.max(paused_for),
                    };
                    (slot.window.used(now_us), wait)
                }
                None => (0, 0),
            };
            before.push(limit.max.saturating_sub(used));
            // The limit that keeps the caller waiting longest is the one to report.
            if wait > 0 && refusal.is_none_or(|(_, longest)| wait > longest) {
                refusal = Some((index, wait));
            }
        }
        if let Some((index, retry_after_us)) = refusal {
            return Outcome::Refused {
                index,
                retry_after_us,
                remaining: before,
            };
        }
        if take {
            for (limit, &slot) in limits.iter().zip(&found) {
                if let Some(i) = slot {
                    let slot = &mut self.slots[i];
                    slot.window.take(now_us, limit.cost);
                    slot.limit = limit.max;
                    slot.last_used_us = now_us;
                }
            }
        }
        for (left, limit) in before.iter_mut().zip(limits) {
            *left = left.saturating_sub(limit.cost);
        }
        Outcome::Admitted { remaining: before }
    }

    /// Corrects what a check took from `key` at `at_us` by `delta`; nothing when the key is
    /// gone (reset, or evicted once idle).
    pub fn adjust(&mut self, key: Key, at_us: u64, delta: i64, now_us: u64) {
        if let Ok(i) = self.find(key.hash()) {
            self.slots[i].window.adjust(now_us, at_us, delta);
        }
    }

    /// How much longer `key` is paused (0: not paused), without creating it.
    pub fn paused_for(&self, key: Key, now_us: u64) -> u64 {
        self.find(key.hash())
            .map_or(0, |i| self.slots[i].paused_until_us.saturating_sub(now_us))
    }

    /// Refuses every call on `key` until `until_us` (a provider's Retry-After), or longer when
    /// it is paused longer already.
    pub fn pause(&mut self, key: Key, until_us: u64, now_us: u64) -> Result<(), u64> {
        let i = self.slot_of(key, now_us)?;
        // Of two pauses, the longer wins: a shorter Retry-After never shortens one in force.
        self.slots[i].paused_until_us = self.slots[i].paused_until_us.max(until_us);
        self.slots[i].last_used_us = now_us;
        Ok(())
    }

    pub fn knows(&self, key: Key) -> bool {
        self.find(key.hash()).is_ok()
    }

    /// Counts one taken from `key` at `at_us`, a time in its window (a call admitted by
    /// another server's limiter, or before this one started).
    pub fn count_taken(&mut self, key: Key, at_us: u64, now_us: u64) -> Result<(), u64> {
        let i = self.slot_of(key, now_us)?;
        self.slots[i].window.adjust(now_us, at_us, 1);
        self.slots[i].last_used_us = now_us;
        Ok(())
    }

    /// The slot of `key`, made when it has none; Err: how long until one is free.
    fn slot_of(&mut self, key: Key, now_us: u64) -> Result<usize, u64> {
        let pinned = Limit::new(key, 0, 0);
        if self.find(pinned.hash).is_err() {
            self.make_room(1, &[pinned], now_us)?;
        }
        Ok(match self.find(pinned.hash) {
            Ok(i) => i,
            Err(empty) => self.insert(empty, new_slot(key, pinned.hash, now_us)),
        })
    }

    /// Forgets the keys whose name is `name` (any window), or every key; returns how many.
    pub fn reset(&mut self, name: Option<&str>) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.slots.len() {
            let slot = &self.slots[i];
            // A removal can shift a later slot into i, so look at i again after one.
            if !slot.is_empty() && name.is_none_or(|n| truncated(n) == slot.name()) {
                self.remove(i);
                removed += 1;
            } else {
                i += 1;
            }
        }
        removed
    }

    pub fn usage(&mut self, now_us: u64) -> Vec<Usage> {
        self.slots
            .iter_mut()
            .filter(|s| !s.is_empty())
            .map(|s| Usage {
                name: s.name().to_string(),
                window_us: s.window.window_us(),
                limit: s.limit,
                used: s.window.used(now_us),
                paused_until_us: s.paused_until_us,
                last_used_us: s.last_used_us,
            })
            .collect()
    }
}

/// A name cut to what a slot keeps, at a character boundary.
fn truncated(name: &str) -> &str {
    let mut end = name.len().min(NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn new_slot(key: Key, hash: [u64; 2], now_us: u64) -> Slot {
    let shown = truncated(key.name);
    let mut name = [0; NAME_BYTES];
    name[..shown.len()].copy_from_slice(shown.as_bytes());
    Slot {
        hash,
        name_len: shown.len() as u8,
        name,
        limit: 0,
        last_used_us: now_us,
        paused_until_us: 0,
        window: Window::new(key.window_us, now_us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000_000;

    fn key(name: &str) -> Key<'_> {
        Key {
            name,
            window_us: MINUTE,
        }
    }

    fn limit(name: &str, max: u64) -> Limit<'_> {
        Limit::new(key(name), max, 1)
    }

    /// What shared memory holds for a table: its slots and its count of live keys.
    struct Store {
        slots: Vec<Slot>,
        live: u64,
        max_keys: usize,
    }

    impl Store {
        fn new(max_keys: usize) -> Store {
            let slots = vec![Slot::EMPTY; Table::slots_for(max_keys)];
            Store {
                slots,
                live: 0,
                max_keys,
            }
        }

        fn table(&mut self) -> Table<'_> {
            Table::new(&mut self.slots, self.max_keys, &mut self.live)
        }
    }

    fn tiers<'a>(agent: &'a str) -> [Limit<'a>; 3] {
        [limit("global", 400), limit("org:1", 100), limit(agent, 50)]
    }

    #[test]
    fn three_tiers_admit_together_and_refuse_together() {
        let mut store = Store::new(16);
        let mut t = store.table();
        for i in 0..50 {
            let outcome = t.check(i, &tiers("agent:a"), true);
            assert_eq!(
                outcome,
                Outcome::Admitted {
                    remaining: vec![399 - i, 99 - i, 49 - i]
                }
            );
        }
        let Outcome::Refused {
            index, remaining, ..
        } = t.check(50, &tiers("agent:a"), true)
        else {
            panic!("the 51st call for one agent was admitted");
        };
        assert_eq!((index, remaining), (2, vec![350, 50, 0]));
        // The refusal at the agent tier took nothing at the others: another agent of the same
        // organization still has exactly 50 organization calls.
        let usage = t.usage(60);
        let used = |name: &str| usage.iter().find(|u| u.name == name).map(|u| u.used);
        assert_eq!((used("global"), used("org:1")), (Some(50), Some(50)));
        for i in 0..50 {
            assert!(matches!(
                t.check(100 + i, &tiers("agent:b"), true),
                Outcome::Admitted { .. }
            ));
        }
        let Outcome::Refused { index, .. } = t.check(200, &tiers("agent:c"), true) else {
            panic!("the organization's 101st call was admitted");
        };
        assert_eq!(index, 1);
    }

    #[test]
    fn peeking_takes_nothing_and_creates_no_key() {
        let mut store = Store::new(4);
        let mut t = store.table();
        assert_eq!(
            t.check(0, &[Limit::new(key("k"), 2, 2)], false),
            Outcome::Admitted { remaining: vec![0] }
        );
        assert!(t.usage(0).is_empty());
        t.check(0, &[Limit::new(key("k"), 2, 2)], true);
        assert!(matches!(
            t.check(1, &[limit("k", 2)], false),
            Outcome::Refused { .. }
        ));
    }

    #[test]
    fn a_paused_key_refuses_until_its_time() {
        let mut store = Store::new(4);
        let mut t = store.table();
        t.pause(key("provider:openai"), 5_000_000, 0).unwrap();
        let Outcome::Refused { retry_after_us, .. } =
            t.check(1_000_000, &[limit("provider:openai", 100)], true)
        else {
            panic!("a paused key admitted a call");
        };
        assert_eq!(retry_after_us, 4_000_000);
        assert_eq!(t.paused_for(key("provider:openai"), 2_000_000), 3_000_000);
        assert_eq!(t.paused_for(key("provider:anthropic"), 2_000_000), 0);
        assert!(matches!(
            t.check(5_000_000, &[limit("provider:openai", 100)], true),
            Outcome::Admitted { .. }
        ));
        assert_eq!(t.paused_for(key("provider:openai"), 5_000_000), 0);
    }

    #[test]
    fn calls_counted_from_the_past_fill_their_window_and_leave_it_on_time() {
        let mut store = Store::new(4);
        let mut t = store.table();
        let now = 10 * MINUTE;
        assert!(!t.knows(key("org:moved")));
        // Two calls another server admitted 50 s and 10 s ago, one from before the window.
        for ago in [50_000_000, 10_000_000, MINUTE + 1_000_000] {
            t.count_taken(key("org:moved"), now - ago, now).unwrap();
        }
        assert!(t.knows(key("org:moved")));
        let Outcome::Admitted { remaining } = t.check(now, &[limit("org:moved", 3)], true) else {
            panic!("the third call of three was refused");
        };
        assert_eq!(remaining, [0]);
        let Outcome::Refused { retry_after_us, .. } = t.check(now, &[limit("org:moved", 3)], true)
        else {
            panic!("a fourth call within the window was admitted");
        };
        // Room again once the call of 50 s ago leaves the window (to a bucket's width).
        assert!(
            (9_000_000..=11_000_000).contains(&retry_after_us),
            "{retry_after_us}"
        );
    }

    #[test]
    fn of_two_pauses_the_longer_wins() {
        let mut store = Store::new(4);
        let mut t = store.table();
        t.pause(key("credential:a"), 9_000_000, 0).unwrap();
        t.pause(key("credential:a"), 2_000_000, 1_000_000).unwrap();
        assert_eq!(t.paused_for(key("credential:a"), 1_000_000), 8_000_000);
        t.pause(key("credential:a"), 12_000_000, 1_000_000).unwrap();
        assert_eq!(t.paused_for(key("credential:a"), 1_000_000), 11_000_000);
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_key_and_never_a_counting_one() {
        let mut store = Store::new(3);
        let mut t = store.table();
        t.check(0, &[limit("a", 1)], true);
        t.check(10, &[limit("b", 1)], true);
        t.check(20, &[limit("c", 1)], true);
        // All three still count: a fourth key is refused, and nothing is forgotten.
        let Outcome::Full { retry_after_us } = t.check(30, &[limit("d", 1)], true) else {
            panic!("a counting key was evicted");
        };
        assert!(retry_after_us > 0);
        assert!(matches!(
            t.check(40, &[limit("a", 1)], true),
            Outcome::Refused { .. }
        ));
        // Once their windows have drained, the longest idle ("a") makes room.
        let later = 3 * MINUTE;
        t.check(later, &[limit("b", 1)], true);
        t.check(later + 1, &[limit("c", 1)], true);
        assert!(matches!(
            t.check(later + 2, &[limit("d", 1)], true),
            Outcome::Admitted { .. }
        ));
        let mut names: Vec<String> = t.usage(later + 3).into_iter().map(|u| u.name).collect();
        names.sort();
        assert_eq!(names, ["b", "c", "d"]);
    }

    #[test]
    fn many_keys_come_and_go_and_every_lookup_still_finds_its_key() {
        let mut store = Store::new(64);
        let mut t = store.table();
        let names: Vec<String> = (0..2000).map(|i| format!("key-{i}")).collect();
        let mut now = 0;
        for (round, name) in names.iter().enumerate() {
            now += MINUTE; // every earlier key is idle by now
            assert!(matches!(
                t.check(now, &[limit(name, 1)], true),
                Outcome::Admitted { .. }
            ));
            // The keys admitted in this minute are all still refused: none got lost in a shift.
            assert!(
                matches!(
                    t.check(now, &[limit(name, 1)], true),
                    Outcome::Refused { .. }
                ),
                "{round}"
            );
        }
        assert!(t.usage(now).len() <= 64);
    }

    #[test]
    fn reset_forgets_one_key_or_all() {
        let mut store = Store::new(8);
        let mut t = store.table();
        for name in ["a", "b", "c"] {
            t.check(0, &[limit(name, 1)], true);
        }
        assert_eq!(t.reset(Some("b")), 1);
        assert!(matches!(
            t.check(1, &[limit("b", 1)], true),
            Outcome::Admitted { .. }
        ));
        assert!(matches!(
            t.check(1, &[limit("a", 1)], true),
            Outcome::Refused { .. }
        ));
        assert_eq!(t.reset(None), 3);
        assert!(t.usage(2).is_empty());
    }

    #[test]
    fn long_names_are_cut_for_display_at_a_character_boundary() {
        let mut store = Store::new(4);
        let mut t = store.table();
        let long = "é".repeat(40);
        t.check(0, &[limit(&long, 1)], true);
        let shown = &t.usage(0)[0].name;
        assert!(long.starts_with(shown.as_str()) && shown.len() <= NAME_BYTES);
        assert_eq!(t.reset(Some(&long)), 1);
    }
}
