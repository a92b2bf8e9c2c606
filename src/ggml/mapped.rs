//! A read-only memory mapping of a file.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::Mmap;

/// A whole file mapped read-only. Weights on the CPU backend are ggml tensors pointing into it.
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            // mmap of an empty file fails on some platforms; an empty mapping is simply empty.
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the mapping is read-only and private to this process. Modifying the file while it
        // is mapped is outside what we can guard against (as for every mmap-based loader); the
        // documentation says model files must not be rewritten while in use.
        let map = unsafe { Mmap::map(&file)? };
        #[cfg(unix)]
        {
            // Weights are read front to back at load (repacking) and then randomly; let the kernel
            // read ahead. Failure only costs speed.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        Ok(MappedFile { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
