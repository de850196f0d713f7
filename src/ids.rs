//! Identifiers: 128 random bits, shown as 32 lower-case hex characters.
//!
//! Device ids travel in URLs and are the Hawk credential id; being random and this long, they
//! cannot be guessed or enumerated.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            pub fn random() -> Self {
                let mut bytes = [0u8; 16];
                rand::thread_rng().fill_bytes(&mut bytes);
                $name(bytes)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                parse_hex128(s).map($name)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse()
                    .map_err(|()| serde::de::Error::custom("expected 32 hex characters"))
            }
        }
    };
}

id_type!(
    /// An owner account.
    UserId
);
id_type!(
    /// A registered device (the seed's WTFID).
    DeviceId
);

fn parse_hex128(s: &str) -> Result<[u8; 16], ()> {
    let bytes = s.as_bytes();
    if bytes.len() != 32 {
        return Err(());
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or(())?;
        let lo = (pair[1] as char).to_digit(16).ok_or(())?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = DeviceId::random();
        assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
        assert!("xyz".parse::<DeviceId>().is_err());
        assert!(
            "0123456789abcdef0123456789abcdeg"
                .parse::<DeviceId>()
                .is_err()
        );
    }
}
