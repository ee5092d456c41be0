//! A backend that injects faults, for tests and drills: writes or flushes that fail, stall, or
//! run out of space, switched on and off at run time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Backend, Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every write fails (the store refuses the batch).
    FailWrites,
    /// Writes are taken but flushes fail (the disk will not sync).
    FailFlushes,
    /// Writes fail as a full disk makes them fail.
    NoSpace,
    /// Every write and flush takes this long first.
    Stall(Duration),
}

pub struct Faulty {
    inner: Arc<Store>,
    fault: Mutex<Fault>,
    injected: AtomicU64,
}

impl Faulty {
    pub fn new(inner: Arc<Store>) -> Self {
        Faulty {
            inner,
            fault: Mutex::new(Fault::None),
            injected: AtomicU64::new(0),
        }
    }

    pub fn set(&self, f: Fault) {
        *self.fault.lock().expect("fault lock") = f;
    }

    /// How many operations a fault has failed or stalled.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn gate(&self, flushing: bool) -> Result<(), StoreError> {
        let f = *self.fault.lock().expect("fault lock");
        let fail = |m: &str| {
            self.injected.fetch_add(1, Ordering::Relaxed);
            Err(StoreError::Failed(m.into()))
        };
        match f {
            Fault::None => Ok(()),
            Fault::FailWrites if !flushing => fail("injected: write failed"),
            Fault::FailFlushes if flushing => fail("injected: flush failed"),
            Fault::NoSpace if !flushing => fail("No space left on device (os error 28)"),
            Fault::Stall(d) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(d);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Backend for Faulty {
    fn write_groups(&self, groups: &[super::Group]) -> Result<(), StoreError> {
        self.gate(false)?;
        self.inner.write_groups(groups)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.gate(true)?;
        Backend::flush(&*self.inner)
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.gate(false)?;
        self.gate(true)?;
        Backend::probe(&*self.inner)
    }
}
