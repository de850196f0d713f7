//! `Registry`: the sharded table of devices and who owns them.
//!
//! This is where device state lives, and the seam for running several gateway nodes: today the
//! table is in this process; with several nodes, a device's record moves to the shared store
//! (Redis) and `Device::mailbox` stays on the node that holds the device's poll, reached by
//! routing a wake-up to that node. Nothing outside this module and `mailbox` knows where a
//! device's poll is parked.
//!
//! Invariants:
//! - Lock order is `by_owner` shard, then `devices` shard; never the reverse.
//! - A device id in `by_owner[u]` is in `devices` with `owner == u`, and the other way round.

use std::sync::Arc;

use dashmap::DashMap;

use crate::config::DevicesConfig;
use crate::device::{Device, DeviceData, Registration, Storage};
use crate::error::ApiError;
use crate::ids::{DeviceId, UserId};
use crate::store::{Commit, Durability};

#[derive(Debug, Default)]
pub struct Registry {
    /// Device id → device. Sharded, so wake-ups for different devices never contend.
    devices: DashMap<DeviceId, Arc<Device>>,
    /// Owner → their device ids, in registration order.
    by_owner: DashMap<UserId, Vec<DeviceId>>,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A fresh id: nothing of any earlier device was carried over.
    New(DeviceId),
    /// The device's own known id: kept, with the new secret and push URL.
    Renewed(DeviceId),
}

// === Registry ===

impl Registry {
    /// Registers a device for `owner`, or renews one of theirs when `known` names it.
    pub fn register(
        &self,
        owner: UserId,
        known: Option<DeviceId>,
        registration: Registration,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> Result<(Registered, Commit), ApiError> {
        if let Some(id) = known
            && let Some(device) = self.get(&id).filter(|d| d.owner == owner)
        {
            let commit = device.reregister(registration, limits, storage);
            return Ok((Registered::Renewed(id), commit));
        }
        let mut owned = self.by_owner.entry(owner).or_default();
        if owned.len() >= limits.max_per_user {
            return Err(ApiError::DeviceLimit {
                max: limits.max_per_user,
            });
        }
        let id = DeviceId::random();
        let device = Arc::new(Device::new(id, owner, registration, crate::clock::now_ms()));
        // Journaled while the owner's entry is locked, so it precedes any removal.
        let commit = storage.journal.append(
            &device.registered_record(storage.sealer),
            Durability::Commands,
        );
        self.devices.insert(id, device);
        owned.push(id);
        Ok((Registered::New(id), commit))
    }

    /// Puts back a device from a snapshot or the journal.
    pub fn restore(&self, id: DeviceId, data: DeviceData, secret: String) {
        let owner = data.owner;
        let mut owned = self.by_owner.entry(owner).or_default();
        if !owned.contains(&id) {
            owned.push(id);
        }
        self.devices
            .insert(id, Arc::new(Device::restore(id, data, secret)));
    }

    /// Replays a removal.
    pub fn forget_restored(&self, id: &DeviceId) {
        if let Some((_, device)) = self.devices.remove(id)
            && let Some(mut owned) = self.by_owner.get_mut(&device.owner)
        {
            owned.retain(|d| d != id);
        }
    }

    /// Every device, for a snapshot. No lock is held once it returns.
    pub fn devices(&self) -> Vec<Arc<Device>> {
        self.devices.iter().map(|d| d.value().clone()).collect()
    }

    pub fn get(&self, id: &DeviceId) -> Option<Arc<Device>> {
        self.devices.get(id).map(|d| d.clone())
    }

    /// The owner's device, or 404: another user's device is indistinguishable from none.
    pub fn owned(&self, owner: UserId, id: &str) -> Result<Arc<Device>, ApiError> {
        id.parse::<DeviceId>()
            .ok()
            .and_then(|id| self.get(&id))
            .filter(|d| d.owner == owner)
            .ok_or(ApiError::NotFound)
    }

    pub fn list(&self, owner: UserId) -> Vec<Arc<Device>> {
        let ids = self
            .by_owner
            .get(&owner)
            .map(|ids| ids.clone())
            .unwrap_or_default();
        ids.iter().filter_map(|id| self.get(id)).collect()
    }

    /// Forgets a device: its data goes, and its parked poll is released.
    pub fn remove(
        &self,
        owner: UserId,
        id: DeviceId,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> Result<Commit, ApiError> {
        let mut owned = self.by_owner.get_mut(&owner).ok_or(ApiError::NotFound)?;
        let at = owned
            .iter()
            .position(|d| *d == id)
            .ok_or(ApiError::NotFound)?;
        owned.remove(at);
        let commit = match self.devices.remove(&id) {
            Some((_, device)) => device.mark_removed(limits, storage),
            None => Commit::done(),
        };
        Ok(commit)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Visits every device (for the offline sweep). Holds one shard lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Device>)) {
        for entry in self.devices.iter() {
            f(entry.value());
        }
    }
}
