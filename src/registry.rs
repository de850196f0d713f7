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
use crate::device::{Device, Registration};
use crate::error::ApiError;
use crate::ids::{DeviceId, UserId};

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
    ) -> Result<Registered, ApiError> {
        if let Some(id) = known {
            if let Some(device) = self.get(&id).filter(|d| d.owner == owner) {
                device.reregister(registration, limits);
                return Ok(Registered::Renewed(id));
            }
        }
        let mut owned = self.by_owner.entry(owner).or_default();
        if owned.len() >= limits.max_per_user {
            return Err(ApiError::DeviceLimit {
                max: limits.max_per_user,
            });
        }
        let id = DeviceId::random();
        self.devices
            .insert(id, Arc::new(Device::new(id, owner, registration)));
        owned.push(id);
        Ok(Registered::New(id))
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
    pub fn remove(&self, owner: UserId, id: DeviceId) -> Result<(), ApiError> {
        {
            let mut owned = self.by_owner.get_mut(&owner).ok_or(ApiError::NotFound)?;
            let at = owned
                .iter()
                .position(|d| *d == id)
                .ok_or(ApiError::NotFound)?;
            owned.remove(at);
        }
        if let Some((_, device)) = self.devices.remove(&id) {
            device.mark_removed();
        }
        Ok(())
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
