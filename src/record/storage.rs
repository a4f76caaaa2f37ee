//! Where segment bytes go: the [`Storage`] trait the writer and the reader use, the real
//! filesystem ([`FileSystem`]), and [`SimulatedStorage`], an in-memory double that keeps
//! written-but-unsynced bytes apart from synced ones so a test can crash it (dropping or
//! tearing what was never synced), fill its disk, or fail an fsync the way Linux does after a
//! writeback error (the unsynced pages are lost, and a later fsync succeeds without them).
//!
//! Nothing here knows the segment format.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

/// A directory of segment files.
pub trait Storage: Send + Sync {
    /// Creates `dir` and its parents, each durably (its parent fsynced once it is created).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of every entry in `dir` but its subdirectories: files, links and anything
    /// else named like a segment is a segment to its readers (who find out what it is when
    /// they open it), and anything else is reported as not one, never passed over unseen.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new, empty file for appending; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens an existing file for appending (recovery seals it).
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens a file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
    /// Makes the directory's entries (created files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file (made durable by [`Storage::sync_dir`] of its directory).
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// A file being appended to.
pub trait SegmentFile: Send {
    /// Appends all of `bytes`; on an error some prefix may have been written.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; later appends go after them.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// The file's current size in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// A file read at offsets.
pub trait ReadAt: Send + Sync {
    /// The file's size in bytes when it was opened.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; fails if the file ends first.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for Bytes {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(buf.len()).filter(|&end| end <= self.len());
        let end = end.ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileSystem;

struct FsFile {
    file: File,
}

impl SegmentFile for FsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // The file is opened with O_APPEND, so the next write lands at the new end.
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

struct FsRead {
    file: File,
    len: u64,
}

impl ReadAt for FsRead {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl Storage for FileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // The directories to create, innermost first.
        let missing: Vec<&Path> =
            dir.ancestors().take_while(|path| !path.as_os_str().is_empty() && !path.exists()).collect();
        // Recordings hold every statement and answer: private to the gateway's user (an existing
        // directory keeps the mode its operator gave it).
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        // A new directory's entry lives in its parent, and is durable only once the parent is
        // fsynced: else a power loss can take the recording directory, with every segment
        // fsynced inside it, away.
        for created in missing.iter().rev() {
            let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            self.sync_dir(parent)?;
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            // A link to a segment moved elsewhere (say, to colder storage) is still part of the
            // recording, and a FIFO or a socket still something verify must name.
            if !entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new().append(true).create_new(true).mode(0o600).open(path)?;
        Ok(Box::new(FsFile { file }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = regular_file(OpenOptions::new().append(true), path)?;
        Ok(Box::new(FsFile { file }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let file = regular_file(OpenOptions::new().read(true), path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(FsRead { file, len }))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// Opens `path` (following links) when it is a regular file. Opened without blocking, so a
/// FIFO named like a segment is refused at once rather than waited on for a writer (reads and
/// writes of regular files ignore the flag).
fn regular_file(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let file = options.custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

// ---------------------------------------------------------------------------------------

/// A deterministic pseudo-random sequence (SplitMix64), so every simulated crash replays
/// exactly from its seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, bytes: Vec<u8> },
    Truncate { len: u64 },
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    /// What reads see (the page cache).
    visible: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Operations since the last sync, in order.
    pending: Vec<Op>,
    /// Whether the directory entry survives a crash.
    entry_durable: bool,
}

fn apply(target: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, bytes } => {
            let offset = *offset as usize;
            if target.len() < offset {
                // A write after pages that were lost lands after a hole, read back as zeros.
                target.resize(offset, 0);
            }
            let overlap = (target.len() - offset).min(bytes.len());
            target[offset..offset + overlap].copy_from_slice(&bytes[..overlap]);
            target.extend_from_slice(&bytes[overlap..]);
        }
        Op::Truncate { len } => target.truncate(*len as usize),
    }
}

#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<PathBuf, SimFile>,
    dirs: BTreeSet<PathBuf>,
    /// Bytes the disk holds, over all files; `None` for unlimited.
    space_bytes: Option<u64>,
    /// Fsyncs still to fail.
    failing_syncs: u32,
    /// Appends still to fail (with EIO, writing nothing).
    failing_appends: u32,
    /// How long each file sync blocks before it does anything (a hung disk).
    sync_stall: std::time::Duration,
    /// File syncs begun, stalled ones included.
    syncs_begun: u64,
    /// Bumped by each crash: handles from before a crash stop working.
    epoch: u64,
    syncs: u64,
}

impl SimState {
    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.visible.len() as u64).sum()
    }
}

/// In-memory storage with crashes and faults, for tests. Cheap to clone (shared state).
#[derive(Debug, Clone, Default)]
pub struct SimulatedStorage {
    state: Arc<Mutex<SimState>>,
}

impl SimulatedStorage {
    /// An empty simulated disk.
    pub fn new() -> SimulatedStorage {
        SimulatedStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A test that panicked while holding the lock leaves consistent data behind.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Limits the disk to `bytes` in total (`None`: unlimited). Appends past it write what
    /// fits and fail with ENOSPC, as write(2) does.
    pub fn set_space_bytes(&self, bytes: Option<u64>) {
        self.lock().space_bytes = bytes;
    }

    /// Makes the next `n` file syncs fail with EIO, dropping what they should have persisted.
    pub fn fail_next_syncs(&self, n: u32) {
        self.lock().failing_syncs = n;
    }

    /// Makes the next `n` appends fail with EIO, writing nothing.
    pub fn fail_next_appends(&self, n: u32) {
        self.lock().failing_appends = n;
    }

    /// Makes every later file sync block for `stall` first, as a hung disk's fsync does.
    pub fn stall_syncs(&self, stall: std::time::Duration) {
        self.lock().sync_stall = stall;
    }

    /// File syncs begun so far (a stalled one included).
    pub fn syncs_begun(&self) -> u64 {
        self.lock().syncs_begun
    }

    /// Successful file syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Simulates a power loss: each file keeps its synced bytes plus a seeded prefix of what
    /// was appended since (the last kept write possibly torn, its torn part possibly garbage),
    /// and files whose directory entry was never synced may vanish.
    pub fn crash(&self, seed: u64) {
        let mut rng = SplitMix64(seed);
        let mut state = self.lock();
        state.epoch += 1;
        let mut vanished = Vec::new();
        for (path, file) in state.files.iter_mut() {
            if !file.entry_durable && rng.below(2) == 0 {
                vanished.push(path.clone());
                continue;
            }
            let kept_ops = rng.below(file.pending.len() as u64 + 1) as usize;
            let mut result = file.durable.clone();
            for op in &file.pending[..kept_ops] {
                apply(&mut result, op);
            }
            if let Some(Op::Write { offset, bytes }) = file.pending.get(kept_ops) {
                // The next write reached the disk in part: a prefix, maybe with garbage after it.
                let torn_len = rng.below(bytes.len() as u64 + 1) as usize;
                let mut torn = bytes[..torn_len].to_vec();
                if torn_len > 0 && rng.below(4) == 0 {
                    let from = rng.below(torn_len as u64) as usize;
                    for byte in &mut torn[from..] {
                        *byte = rng.next_u64() as u8;
                    }
                }
                apply(&mut result, &Op::Write { offset: *offset, bytes: torn });
            }
            file.visible = result.clone();
            file.durable = result;
            file.pending.clear();
            file.entry_durable = true;
        }
        for path in vanished {
            state.files.remove(&path);
        }
    }

    /// An independent copy of this disk (same files, same pending bytes), so one history can
    /// be crashed in many ways.
    pub fn fork(&self) -> SimulatedStorage {
        let state = self.lock();
        let copy = SimState {
            files: state.files.clone(),
            dirs: state.dirs.clone(),
            space_bytes: state.space_bytes,
            failing_syncs: state.failing_syncs,
            failing_appends: state.failing_appends,
            sync_stall: state.sync_stall,
            syncs_begun: state.syncs_begun,
            epoch: state.epoch + 1,
            syncs: state.syncs,
        };
        SimulatedStorage { state: Arc::new(Mutex::new(copy)) }
    }

    /// A file's visible bytes.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().files.get(path).map(|f| f.visible.clone())
    }

    /// Replaces a file's bytes (visible and durable), for tamper tests.
    pub fn write(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.lock();
        let file = state.files.entry(path.to_owned()).or_default();
        file.visible = bytes.clone();
        file.durable = bytes;
        file.pending.clear();
        file.entry_durable = true;
    }
}

struct SimFileHandle {
    storage: SimulatedStorage,
    path: PathBuf,
    epoch: u64,
}

impl SimFileHandle {
    fn with_file<T>(&self, f: impl FnOnce(&mut SimState) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.storage.lock();
        if state.epoch != self.epoch || !state.files.contains_key(&self.path) {
            return Err(io::Error::other("simulated file handle from before a crash"));
        }
        f(&mut state)
    }
}

fn sim_file<'a>(state: &'a mut SimState, path: &Path) -> &'a mut SimFile {
    state.files.get_mut(path).expect("checked by with_file")
}

impl SegmentFile for SimFileHandle {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let path = self.path.clone();
        self.with_file(|state| {
            if state.failing_appends > 0 {
                state.failing_appends -= 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let room = match state.space_bytes {
                Some(space) => space.saturating_sub(state.used_bytes()) as usize,
                None => usize::MAX,
            };
            let fits = bytes.len().min(room);
            let file = sim_file(state, &path);
            if fits > 0 {
                let op = Op::Write { offset: file.visible.len() as u64, bytes: bytes[..fits].to_vec() };
                apply(&mut file.visible, &op);
                file.pending.push(op);
            }
            if fits < bytes.len() { Err(io::Error::from_raw_os_error(libc::ENOSPC)) } else { Ok(()) }
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        let stall = {
            let mut state = self.storage.lock();
            state.syncs_begun += 1;
            state.sync_stall
        };
        std::thread::sleep(stall);
        let path = self.path.clone();
        self.with_file(|state| {
            let failing = state.failing_syncs > 0;
            if failing {
                state.failing_syncs -= 1;
            } else {
                state.syncs += 1;
            }
            let file = sim_file(state, &path);
            let pending = std::mem::take(&mut file.pending);
            if failing {
                // As on Linux after a writeback error: the pages are marked clean and never
                // written, so retrying the sync would "succeed" without them.
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            for op in &pending {
                apply(&mut file.durable, op);
            }
            Ok(())
        })
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let path = self.path.clone();
        self.with_file(|state| {
            let file = sim_file(state, &path);
            let op = Op::Truncate { len };
            apply(&mut file.visible, &op);
            file.pending.push(op);
            Ok(())
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with_file(|state| Ok(sim_file(state, &self.path).visible.len() as u64))
    }
}

impl Storage for SimulatedStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.lock().dirs.insert(dir.to_owned());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(state
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let mut state = self.lock();
        if state.files.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        state.files.insert(path.to_owned(), SimFile::default());
        Ok(Box::new(SimFileHandle { storage: self.clone(), path: path.to_owned(), epoch: state.epoch }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let state = self.lock();
        if !state.files.contains_key(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(Box::new(SimFileHandle { storage: self.clone(), path: path.to_owned(), epoch: state.epoch }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let state = self.lock();
        let file = state.files.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(Bytes::from(file.visible.clone())))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for (path, file) in state.files.iter_mut() {
            if path.parent() == Some(dir) {
                file.entry_durable = true;
            }
        }
        Ok(())
    }

    /// Removed at once and for good (a crash before the directory's fsync does not bring the
    /// file back: the writer removes only files that recovery would rewrite anyway).
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.lock().files.remove(path).map(|_| ()).ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_are_private_to_the_gateways_user() {
        use std::os::unix::fs::PermissionsExt as _;
        let temp = tempfile::tempdir().unwrap();
        let nested = temp.path().join("a/b");
        FileSystem.create_dir_all(&nested).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&temp.path().join("a")), mode(&nested)), (0o700, 0o700));
        let segment = nested.join("seg-0-1.sgr");
        FileSystem.create_new(&segment).unwrap();
        assert_eq!(mode(&segment), 0o600);
    }

    #[test]
    fn the_file_system_creates_nested_directories_and_fsyncs_their_parents() {
        // The fsyncs cannot be observed here; that each parent opens and syncs can (an error
        // there fails the call).
        let temp = tempfile::tempdir().unwrap();
        let nested = temp.path().join("a/b/c");
        FileSystem.create_dir_all(&nested).unwrap();
        assert!(nested.is_dir());
        FileSystem.create_dir_all(&nested).unwrap();
    }

    #[test]
    fn a_crash_keeps_synced_bytes_and_a_prefix_of_the_rest() {
        let storage = SimulatedStorage::new();
        let dir = Path::new("/rec");
        storage.create_dir_all(dir).unwrap();
        let path = dir.join("f");
        let mut file = storage.create_new(&path).unwrap();
        file.append(b"synced").unwrap();
        file.sync().unwrap();
        storage.sync_dir(dir).unwrap();
        file.append(b"-unsynced-tail").unwrap();
        for seed in 0..64 {
            let copy = storage.fork();
            copy.crash(seed);
            let after = copy.read(&path).unwrap();
            assert!(after.starts_with(b"synced"), "seed {seed}: {after:?}");
            assert!(after.len() <= b"synced-unsynced-tail".len());
        }
        // The old handle is dead after a crash.
        storage.crash(1);
        assert!(file.append(b"x").is_err());
    }

    #[test]
    fn a_failed_sync_loses_its_bytes_and_the_retry_does_not_bring_them_back() {
        let storage = SimulatedStorage::new();
        let dir = Path::new("/rec");
        storage.create_dir_all(dir).unwrap();
        let path = dir.join("f");
        let mut file = storage.create_new(&path).unwrap();
        storage.sync_dir(dir).unwrap();
        file.append(b"lost").unwrap();
        storage.fail_next_syncs(1);
        assert_eq!(file.sync().unwrap_err().raw_os_error(), Some(libc::EIO));
        file.append(b"kept").unwrap();
        file.sync().unwrap();
        storage.crash(0);
        assert_eq!(storage.read(&path).unwrap(), b"\0\0\0\0kept");
    }

    #[test]
    fn a_full_disk_writes_what_fits_then_fails() {
        let storage = SimulatedStorage::new();
        let dir = Path::new("/rec");
        storage.create_dir_all(dir).unwrap();
        let path = dir.join("f");
        let mut file = storage.create_new(&path).unwrap();
        storage.set_space_bytes(Some(4));
        assert_eq!(file.append(b"abcdef").unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(storage.read(&path).unwrap(), b"abcd");
        file.truncate(0).unwrap();
        file.append(b"abc").unwrap();
    }
}
