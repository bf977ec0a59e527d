//! A passthrough filesystem that remembers what is not yet synced, so that it can lose it: the
//! power loss of a whole broker group, in the style of LazyFS (which Jepsen uses).
//!
//! Every operation goes straight to a backing directory, so reads need no cache of their own.
//! Before a write (or a truncation) changes bytes that were there at the file's last `fsync`,
//! their old content is kept in the file's undo log, with the file's synced length. An `fsync`
//! or `fdatasync` of the file forgets its log: what it holds is durable now. A power loss
//! ([`LazyFs::power_off`]) puts every logged block back and cuts every file to its synced length:
//! exactly the writes no sync covered are gone, on every node whose data lives here at once.
//!
//! Names (create, rename, unlink, mkdir) are durable at once, as on a journalling filesystem
//! that commits its metadata; a file created and never synced survives empty. Only file
//! content is lost, which is what a skipped `fsync` puts at risk.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Granularity of the undo log.
const BLOCK: u64 = 4096;

/// Nothing is cached by the kernel: every lookup and attribute comes from the backing files.
const TTL: Duration = Duration::ZERO;

/// Every read and write of file content comes here, past the kernel's page cache, so a read sees
/// exactly what the backing file holds. With the cache, a RocksDB checkpoint copying a WAL that
/// was being appended to once read fewer bytes than `stat` had just reported ("File smaller than
/// expected for copy", in 1 of 3 chaos runs of 63 rounds), which stopped the node; the kernel
/// path that did it was not pinned down.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO;

/// What a file held at its last sync, where later writes changed it.
#[derive(Debug)]
pub struct Undo {
    /// The file's length at its last sync.
    synced_len: u64,
    /// Block number -> the block's synced content (cut at `synced_len`).
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl Undo {
    /// Starts a log for a file as it is now (its last sync, or its creation).
    pub fn new(file: &File) -> io::Result<Undo> {
        Ok(Undo {
            synced_len: file.metadata()?.len(),
            blocks: BTreeMap::new(),
        })
    }

    /// For a file created now: nothing of it is durable.
    pub fn empty() -> Undo {
        Undo {
            synced_len: 0,
            blocks: BTreeMap::new(),
        }
    }

    /// Keeps the synced content of `[offset, offset + len)` before it changes.
    pub fn before_write(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.synced_len);
        if len == 0 || offset >= end {
            return Ok(());
        }
        for block in offset / BLOCK..=(end - 1) / BLOCK {
            if self.blocks.contains_key(&block) {
                continue;
            }
            let start = block * BLOCK;
            let mut buf = vec![0u8; ((start + BLOCK).min(self.synced_len) - start) as usize];
            read_full(file, &mut buf, start)?;
            self.blocks.insert(block, buf);
        }
        Ok(())
    }

    /// Keeps what a truncation to `new_len` would drop.
    pub fn before_truncate(&mut self, file: &File, new_len: u64) -> io::Result<()> {
        let len = file.metadata()?.len();
        if new_len < len {
            self.before_write(file, new_len, len - new_len)?;
        }
        Ok(())
    }

    /// Puts the file back as it was at its last sync; returns the bytes of blocks restored.
    pub fn revert(&self, file: &File) -> io::Result<u64> {
        let mut restored = 0;
        for (block, data) in &self.blocks {
            file.write_all_at(data, block * BLOCK)?;
            restored += data.len() as u64;
        }
        file.set_len(self.synced_len)?;
        Ok(restored)
    }
}

/// Reads as much of `buf` as the file has at `offset`; the rest stays zero.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// What a power loss dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PowerLoss {
    /// Files that had writes no sync covered.
    pub files: u64,
    /// Bytes of synced content put back over later writes.
    pub restored_bytes: u64,
    /// Bytes cut off files that had grown since their last sync.
    pub truncated_bytes: u64,
}

struct Inner {
    /// Path (relative to the backing root) of every inode the kernel knows.
    paths: HashMap<u64, PathBuf>,
    /// Open files: handle -> (inode, file).
    handles: HashMap<u64, (u64, Arc<File>)>,
    next_handle: u64,
    /// Undo logs of the files written since their last sync.
    undo: HashMap<u64, Undo>,
    /// After a power loss every operation fails.
    off: bool,
    /// Syncs seen: a run with none would prove nothing.
    syncs: u64,
}

impl Inner {
    /// Keeps an open file; returns its handle.
    fn add_handle(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, (ino, Arc::new(file)));
        fh
    }
}

/// The filesystem: a backing directory and the undo logs. Inode numbers are the backing
/// filesystem's (the root is 1, as FUSE wants), so hard links share one.
pub struct LazyFs {
    root: PathBuf,
    root_ino: u64,
    inner: Mutex<Inner>,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl LazyFs {
    pub fn new(backing: &Path) -> io::Result<Arc<LazyFs>> {
        let root = backing.canonicalize()?;
        let root_ino = std::fs::metadata(&root)?.ino();
        let mut paths = HashMap::new();
        paths.insert(INodeNo::ROOT.0, PathBuf::new());
        Ok(Arc::new(LazyFs {
            root,
            root_ino,
            inner: Mutex::new(Inner {
                paths,
                handles: HashMap::new(),
                next_handle: 1,
                undo: HashMap::new(),
                off: false,
                syncs: 0,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ino_of(&self, meta: &std::fs::Metadata) -> u64 {
        if meta.ino() == self.root_ino {
            INodeNo::ROOT.0
        } else {
            meta.ino()
        }
    }

    fn attr(&self, meta: &std::fs::Metadata) -> FileAttr {
        let time = |secs: i64, nsecs: i64| {
            if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
            } else {
                UNIX_EPOCH
            }
        };
        FileAttr {
            ino: INodeNo(self.ino_of(meta)),
            size: meta.size(),
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: time(meta.ctime(), meta.ctime_nsec()),
            kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: meta.blksize() as u32,
            flags: 0,
        }
    }

    /// The backing path of a known inode.
    fn path(&self, inner: &Inner, ino: INodeNo) -> Result<PathBuf, Errno> {
        inner.paths.get(&ino.0).map(|p| self.root.join(p)).ok_or(Errno::ENOENT)
    }

    /// The relative path of `name` in directory `parent`.
    fn child(&self, inner: &Inner, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        inner.paths.get(&parent.0).map(|p| p.join(name)).ok_or(Errno::ENOENT)
    }

    /// Notes a path's inode and returns its attributes.
    fn learn(&self, inner: &mut Inner, rel: PathBuf) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.root.join(&rel)).map_err(|e| errno(&e))?;
        let attr = self.attr(&meta);
        inner.paths.insert(attr.ino.0, rel);
        Ok(attr)
    }

    /// The power loss: every write since each file's last sync is undone. Afterwards the
    /// filesystem answers every request with EIO until it is unmounted.
    pub fn power_off(&self) -> PowerLoss {
        let mut inner = self.lock();
        inner.off = true;
        inner.handles.clear();
        let mut loss = PowerLoss::default();
        let undo = std::mem::take(&mut inner.undo);
        for (ino, log) in undo {
            // A file unlinked since is gone whatever it held.
            let Some(rel) = inner.paths.get(&ino) else { continue };
            let path = self.root.join(rel);
            let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            match log.revert(&file) {
                Ok(restored) => {
                    loss.files += 1;
                    loss.restored_bytes += restored;
                    loss.truncated_bytes += len.saturating_sub(log.synced_len);
                }
                Err(e) => eprintln!("raftmq-lazyfs: cannot revert {}: {e}", path.display()),
            }
        }
        loss
    }

    /// How many syncs the filesystem has seen.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Logs the synced content of a range about to change.
    fn before_change(
        inner: &mut Inner,
        ino: u64,
        file: &File,
        change: impl FnOnce(&mut Undo) -> io::Result<()>,
    ) -> io::Result<()> {
        let undo = match inner.undo.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Undo::new(file)?),
        };
        change(undo)
    }
}

impl LazyFs {
    /// Truncates (or extends) a file to `len`, its synced content logged first.
    fn truncate(inner: &mut Inner, ino: u64, file: &File, len: u64) -> io::Result<()> {
        LazyFs::before_change(inner, ino, file, |u| u.before_truncate(file, len))?;
        file.set_len(len)
    }
}

/// The Filesystem trait takes `&self`; the mount needs an owned value.
pub struct Mounted(pub Arc<LazyFs>);

macro_rules! alive {
    ($inner:expr, $reply:expr) => {
        if $inner.off {
            return $reply.error(Errno::EIO);
        }
    };
}

macro_rules! tri {
    ($e:expr, $reply:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for Mounted {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let rel = tri!(fs.child(&inner, parent, name), reply);
        let attr = tri!(fs.learn(&mut inner, rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = &self.0;
        let inner = fs.lock();
        alive!(inner, reply);
        let meta = match fh.and_then(|h| inner.handles.get(&h.0)) {
            Some((_, file)) => file.metadata(),
            None => std::fs::symlink_metadata(tri!(fs.path(&inner, ino), reply)),
        };
        let meta = tri!(meta.map_err(|e| errno(&e)), reply);
        reply.attr(&TTL, &fs.attr(&meta));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let path = tri!(fs.path(&inner, ino), reply);
        if let Some(len) = size {
            let file = match fh.and_then(|h| inner.handles.get(&h.0)) {
                Some((_, f)) => Ok(f.clone()),
                None => OpenOptions::new().write(true).open(&path).map(Arc::new),
            };
            let file = tri!(file.map_err(|e| errno(&e)), reply);
            tri!(
                LazyFs::truncate(&mut inner, ino.0, &file, len).map_err(|e| errno(&e)),
                reply
            );
        }
        if let Some(mode) = mode {
            let set = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777));
            tri!(set.map_err(|e| errno(&e)), reply);
        }
        let meta = tri!(std::fs::symlink_metadata(&path).map_err(|e| errno(&e)), reply);
        reply.attr(&TTL, &fs.attr(&meta));
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let rel = tri!(fs.child(&inner, parent, name), reply);
        let path = fs.root.join(&rel);
        let made = std::fs::create_dir(&path)
            .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !umask & 0o7777)));
        tri!(made.map_err(|e| errno(&e)), reply);
        let attr = tri!(fs.learn(&mut inner, rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let rel = tri!(fs.child(&inner, parent, name), reply);
        let path = fs.root.join(&rel);
        let meta = tri!(std::fs::symlink_metadata(&path).map_err(|e| errno(&e)), reply);
        tri!(std::fs::remove_file(&path).map_err(|e| errno(&e)), reply);
        let ino = fs.ino_of(&meta);
        if meta.nlink() <= 1 {
            inner.undo.remove(&ino);
        }
        if inner.paths.get(&ino) == Some(&rel) {
            inner.paths.remove(&ino);
        }
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let rel = tri!(fs.child(&inner, parent, name), reply);
        tri!(std::fs::remove_dir(fs.root.join(&rel)).map_err(|e| errno(&e)), reply);
        inner.paths.retain(|_, p| p != &rel);
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let from = tri!(fs.child(&inner, parent, name), reply);
        let to = tri!(fs.child(&inner, newparent, newname), reply);
        let (from_path, to_path) = (fs.root.join(&from), fs.root.join(&to));
        let replaced = std::fs::symlink_metadata(&to_path).ok();
        if replaced.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return reply.error(Errno::EEXIST);
        }
        if !flags.difference(RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        tri!(std::fs::rename(&from_path, &to_path).map_err(|e| errno(&e)), reply);
        if let Some(meta) = replaced {
            let ino = fs.ino_of(&meta);
            if meta.nlink() <= 1 && !meta.is_dir() {
                inner.undo.remove(&ino);
            }
            inner.paths.remove(&ino);
        }
        // The inode moved, and everything under it when it is a directory.
        for p in inner.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(&from) {
                *p = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
        reply.ok();
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let fs = &self.0;
        let inner = fs.lock();
        alive!(inner, reply);
        let from = tri!(fs.path(&inner, ino), reply);
        let to = tri!(fs.child(&inner, newparent, newname), reply);
        tri!(
            std::fs::hard_link(&from, fs.root.join(&to)).map_err(|e| errno(&e)),
            reply
        );
        let meta = tri!(
            std::fs::symlink_metadata(fs.root.join(&to)).map_err(|e| errno(&e)),
            reply
        );
        reply.entry(&TTL, &fs.attr(&meta), Generation(0));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let path = tri!(fs.path(&inner, ino), reply);
        let file = tri!(open_backing(&path, flags.0, None).map_err(|e| errno(&e)), reply);
        if flags.0 & libc::O_TRUNC != 0 {
            tri!(
                LazyFs::truncate(&mut inner, ino.0, &file, 0).map_err(|e| errno(&e)),
                reply
            );
        }
        let fh = inner.add_handle(ino.0, file);
        reply.opened(FileHandle(fh), OPEN_FLAGS);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = &self.0;
        let mut inner = fs.lock();
        alive!(inner, reply);
        let rel = tri!(fs.child(&inner, parent, name), reply);
        let path = fs.root.join(&rel);
        let existed = path.exists();
        let file = tri!(
            open_backing(&path, flags, Some(mode & !umask & 0o7777)).map_err(|e| errno(&e)),
            reply
        );
        let meta = tri!(file.metadata().map_err(|e| errno(&e)), reply);
        let ino = fs.ino_of(&meta);
        if !existed {
            inner.undo.insert(ino, Undo::empty());
        } else if flags & libc::O_TRUNC != 0 {
            tri!(
                LazyFs::truncate(&mut inner, ino, &file, 0).map_err(|e| errno(&e)),
                reply
            );
        }
        inner.paths.insert(ino, rel);
        let meta = tri!(file.metadata().map_err(|e| errno(&e)), reply);
        let fh = inner.add_handle(ino, file);
        reply.created(&TTL, &fs.attr(&meta), Generation(0), FileHandle(fh), OPEN_FLAGS);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.0.lock();
        alive!(inner, reply);
        let Some((_, file)) = inner.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let n = tri!(read_full(file, &mut buf, offset).map_err(|e| errno(&e)), reply);
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut inner = self.0.lock();
        alive!(inner, reply);
        let Some((ino, file)) = inner.handles.get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let written = LazyFs::before_change(&mut inner, ino, &file, |u| {
            u.before_write(&file, offset, data.len() as u64)
        })
        .and_then(|_| file.write_all_at(data, offset));
        tri!(written.map_err(|e| errno(&e)), reply);
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // A close is not a sync.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Durable from here: the backing file is never really lost, so no real sync is needed
        // (which keeps the suite fast); only the undo log goes.
        let mut inner = self.0.lock();
        alive!(inner, reply);
        inner.undo.remove(&ino.0);
        inner.syncs += 1;
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let fs = &self.0;
        let inner = fs.lock();
        alive!(inner, reply);
        let path = tri!(fs.path(&inner, ino), reply);
        let read = std::fs::read_dir(&path).and_then(|d| d.collect::<io::Result<Vec<_>>>());
        let mut entries = tri!(read.map_err(|e| errno(&e)), reply);
        entries.sort_by_key(|e| e.file_name());
        let mut all = vec![(ino.0, FileType::Directory, OsStr::new(".").to_owned())];
        all.push((INodeNo::ROOT.0, FileType::Directory, OsStr::new("..").to_owned()));
        for e in entries {
            if let Ok(meta) = e.metadata() {
                let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
                all.push((fs.ino_of(&meta), kind, e.file_name()));
            }
        }
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Ok(path) = std::ffi::CString::new(self.0.root.as_os_str().as_encoded_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a zeroed statvfs to fill.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// Opens a backing file as the kernel asked, but readable, without O_APPEND (the kernel gives the offset
/// of every write) and without O_TRUNC (done with the undo log kept).
fn open_backing(path: &Path, flags: i32, create_mode: Option<u32>) -> io::Result<File> {
    // Always readable: the undo log reads what a write is about to replace.
    let mut o = OpenOptions::new();
    o.read(true);
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        o.write(true);
    }
    if let Some(mode) = create_mode {
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        } else {
            o.create(true);
        }
        o.mode(mode);
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            o.write(true);
        }
    }
    let passed = flags & !(libc::O_ACCMODE | libc::O_APPEND | libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL);
    o.custom_flags(passed & (libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_NOATIME));
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, content: &[u8]) -> File {
        let path = dir.join("f");
        std::fs::write(&path, content).unwrap();
        OpenOptions::new().read(true).write(true).open(&path).unwrap()
    }

    fn content(f: &File) -> Vec<u8> {
        let mut buf = vec![0u8; f.metadata().unwrap().len() as usize];
        read_full(f, &mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn writes_after_the_sync_are_undone_and_the_synced_bytes_kept() {
        let dir = tempfile::tempdir().unwrap();
        let synced: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let f = file_with(dir.path(), &synced);
        let mut undo = Undo::new(&f).unwrap();
        // Overwrite across a block boundary, and append past the end.
        for (offset, data) in [(4000u64, vec![0xAA; 200]), (9_990, vec![0xBB; 5_000])] {
            undo.before_write(&f, offset, data.len() as u64).unwrap();
            f.write_all_at(&data, offset).unwrap();
        }
        assert_ne!(content(&f), synced);
        undo.revert(&f).unwrap();
        assert_eq!(content(&f), synced);
    }

    #[test]
    fn a_truncation_and_regrowth_after_the_sync_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let synced = vec![7u8; 9_000];
        let f = file_with(dir.path(), &synced);
        let mut undo = Undo::new(&f).unwrap();
        undo.before_truncate(&f, 100).unwrap();
        f.set_len(100).unwrap();
        undo.before_write(&f, 100, 20_000).unwrap();
        f.write_all_at(&[1u8; 20_000], 100).unwrap();
        undo.revert(&f).unwrap();
        assert_eq!(content(&f), synced);
    }

    #[test]
    fn a_file_created_since_the_sync_is_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = file_with(dir.path(), b"");
        let mut undo = Undo::empty();
        undo.before_write(&f, 0, 5).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        undo.revert(&f).unwrap();
        assert_eq!(content(&f), b"");
    }
}
