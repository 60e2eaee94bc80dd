//! How a feature section reads in the file: a map configures the feature, `false` switches
//! a server-wide default off for one route, `true` turns it on with its defaults.

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// A feature section as written: `false`, `true` or a map of settings.
#[derive(Debug, PartialEq)]
pub enum Switch<T> {
    /// `false`: off here, whatever `defaults:` says.
    Off,
    /// A map (or `true`, read as an empty map).
    On(T),
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Switch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SwitchVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for SwitchVisitor<T> {
            type Value = Switch<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of settings, or true/false")
            }

            fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(if on {
                    Switch::On(T::default())
                } else {
                    Switch::Off
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Switch::On)
            }
        }

        deserializer.deserialize_any(SwitchVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        level: Option<u32>,
    }

    #[test]
    fn reads_false_true_and_maps() {
        let off: Switch<Section> = serde_yaml::from_str("false").unwrap();
        assert_eq!(off, Switch::Off);
        let on: Switch<Section> = serde_yaml::from_str("true").unwrap();
        assert_eq!(on, Switch::On(Section::default()));
        let map: Switch<Section> = serde_yaml::from_str("{level: 3}").unwrap();
        assert_eq!(map, Switch::On(Section { level: Some(3) }));
        let unknown = serde_yaml::from_str::<Switch<Section>>("{levl: 3}").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `levl`"),
            "{unknown}"
        );
        let wrong = serde_yaml::from_str::<Switch<Section>>("3").unwrap_err();
        assert!(wrong.to_string().contains("true/false"), "{wrong}");
    }
}
