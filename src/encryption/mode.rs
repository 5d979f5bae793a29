//! A work session's encryption mode, the transitions between modes and
//! their gates, and what each mode accepts. Pure: the stores call these
//! inside their own atomic step, so a gate and the counts it reads cannot
//! drift apart.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::envelope::{self, Field, Shape};

/// The encryption mode of a work session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = EncryptionMode)]
pub enum Mode {
    /// No encryption: envelopes are refused (the default).
    Off,
    /// Moving to encryption: new values must be sealed with the current
    /// kid; atems rewrite what is stored.
    Enabling,
    /// Everything stored is sealed with the current kid.
    On,
    /// Moving back to plaintext: both are accepted; atems rewrite what is
    /// stored.
    Disabling,
}

impl Mode {
    /// The spelling on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Enabling => "enabling",
            Mode::On => "on",
            Mode::Disabling => "disabling",
        }
    }

    /// Parses the spelling on the wire and in the store.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "off" => Mode::Off,
            "enabling" => Mode::Enabling,
            "on" => Mode::On,
            "disabling" => Mode::Disabling,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A work session's stored mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeState {
    pub mode: Mode,
    /// The current key id; `None` exactly in mode `off`.
    pub kid: Option<String>,
    /// When the mode last changed; `None` when it was never set.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Default for ModeState {
    fn default() -> Self {
        ModeState {
            mode: Mode::Off,
            kid: None,
            updated_at: None,
        }
    }
}

/// How the stored fields of a work session count (every summary and every
/// row version of its vaults; empty values are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldCounts {
    pub plaintext_fields: i64,
    pub ciphertext_fields: i64,
    pub obsolete_fields: i64,
}

impl FieldCounts {
    /// Counts one value.
    pub fn add(&mut self, field: Field) {
        match field {
            Field::Empty => {}
            Field::Plaintext => self.plaintext_fields += 1,
            Field::Ciphertext => self.ciphertext_fields += 1,
            Field::Obsolete => self.obsolete_fields += 1,
        }
    }

    /// Counts values against `kid`.
    pub fn of<'a>(values: impl IntoIterator<Item = &'a str>, kid: Option<&str>) -> FieldCounts {
        let mut counts = FieldCounts::default();
        for v in values {
            counts.add(envelope::classify(v, kid));
        }
        counts
    }
}

/// A requested change: `POST /api/encryption {"mode", "kid"?}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeChange {
    pub mode: Mode,
    /// Already checked with [`envelope::is_valid_kid`].
    pub kid: Option<String>,
}

/// Why a change of mode is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// `invalid encryption transition <from> -> <to>: <why>`
    #[error("invalid encryption transition {from} -> {to}: {why}")]
    Invalid { from: Mode, to: Mode, why: String },
    /// The current mode again, with another kid:
    /// `invalid encryption transition <mode> -> <mode>: the kid is ...`
    #[error(
        "invalid encryption transition {mode} -> {mode}: the kid is {current}, not {asked}; \
         to change keys, move to enabling with the new kid"
    )]
    OtherKid {
        mode: Mode,
        current: String,
        asked: String,
    },
}

/// What a change does, once allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The current mode again: nothing to store.
    Keep,
    /// Store this mode and kid.
    Move { mode: Mode, kid: Option<String> },
}

impl Plan {
    /// Whether the gate of this change needs the field counts (taken with
    /// the current kid): only enabling -> on and disabling -> off do.
    pub fn gated(from: Mode, to: Mode) -> bool {
        matches!(
            (from, to),
            (Mode::Enabling, Mode::On) | (Mode::Disabling, Mode::Off)
        )
    }
}

/// Decides a change of mode. `counts` are the work session's fields against
/// its current kid; they are read only for gated changes ([`Plan::gated`]).
pub fn plan(
    current: &ModeState,
    change: &ModeChange,
    counts: impl FnOnce() -> FieldCounts,
) -> Result<Plan, TransitionError> {
    use Mode::*;
    let (from, to) = (current.mode, change.mode);
    let invalid = |why: String| TransitionError::Invalid { from, to, why };
    let now_kid = current.kid.as_deref();
    let asked = change.kid.as_deref();
    // A kid named where the current one must stay.
    let same_kid = || -> Result<String, TransitionError> {
        let kid = now_kid.unwrap_or_default().to_string();
        match asked {
            Some(k) if k != kid => Err(invalid(format!(
                "the kid stays {kid} in this change; to change keys, finish this change first, \
                 then move to enabling with the new kid"
            ))),
            _ => Ok(kid),
        }
    };
    if from == to {
        return match (asked, now_kid) {
            (Some(k), Some(cur)) if k != cur => Err(TransitionError::OtherKid {
                mode: from,
                current: cur.to_string(),
                asked: k.to_string(),
            }),
            (Some(_), None) => Err(invalid(
                "mode off has no kid; move to enabling to start encrypting".into(),
            )),
            _ => Ok(Plan::Keep),
        };
    }
    let kid = match (from, to) {
        (Off, Enabling) => match asked {
            Some(k) => k.to_string(),
            None => {
                return Err(invalid(
                    "a kid is required: send {\"mode\": \"enabling\", \"kid\": \"<8 lowercase hex characters>\"}"
                        .into(),
                ));
            }
        },
        (On, Enabling) => match asked {
            Some(k) if Some(k) != now_kid => k.to_string(),
            Some(_) => {
                return Err(invalid(
                    "key rotation needs a new kid, different from the current one".into(),
                ));
            }
            None => {
                return Err(invalid(
                    "key rotation needs a new kid: send {\"mode\": \"enabling\", \"kid\": \"<new kid>\"}"
                        .into(),
                ));
            }
        },
        (Enabling, On) => {
            let kid = same_kid()?;
            let c = counts();
            if c.plaintext_fields > 0 || c.obsolete_fields > 0 {
                return Err(invalid(format!(
                    "{} plaintext and {} obsolete fields remain; every atem must rewrite its \
                     vaults with kid {kid} first",
                    c.plaintext_fields, c.obsolete_fields
                )));
            }
            kid
        }
        (Enabling, Disabling) | (On, Disabling) | (Disabling, Enabling) => same_kid()?,
        (Disabling, Off) => {
            same_kid()?;
            let c = counts();
            if c.ciphertext_fields > 0 || c.obsolete_fields > 0 {
                return Err(invalid(format!(
                    "{} ciphertext and {} obsolete fields remain; every atem must rewrite its \
                     vaults back to plaintext first",
                    c.ciphertext_fields, c.obsolete_fields
                )));
            }
            return Ok(Plan::Move {
                mode: Off,
                kid: None,
            });
        }
        (Off, On) | (Off, Disabling) => {
            return Err(invalid(
                "encryption is off; move to enabling (with a kid) first".into(),
            ));
        }
        (On, Off) | (Enabling, Off) => {
            return Err(invalid(
                "move to disabling first and rewrite the vaults back to plaintext".into(),
            ));
        }
        (Disabling, On) => {
            return Err(invalid(
                "move to enabling first and rewrite the vaults with the kid".into(),
            ));
        }
        (Off, Off) | (Enabling, Enabling) | (On, On) | (Disabling, Disabling) => {
            unreachable!("handled above")
        }
    };
    Ok(Plan::Move {
        mode: to,
        kid: Some(kid),
    })
}

/// Whether a work session in `state` accepts `value` for a new vault's
/// summary, a content write or a summary change.
pub fn accepts_write(state: &ModeState, value: &str) -> bool {
    let kid = state.kid.as_deref();
    match (state.mode, envelope::shape(value)) {
        (_, Shape::Empty) => true,
        (Mode::Off, Shape::Plain) => true,
        (Mode::Off, _) => false,
        (Mode::Enabling | Mode::On, Shape::Sealed { kid: k }) => Some(k) == kid,
        (Mode::Enabling | Mode::On, _) => false,
        (Mode::Disabling, Shape::Plain) => true,
        (Mode::Disabling, Shape::Sealed { kid: k }) => Some(k) == kid,
        (Mode::Disabling, Shape::Malformed(_)) => false,
    }
}

/// Whether the rewrite route may run in `state`.
pub fn rewrite_runs_in(mode: Mode) -> bool {
    matches!(mode, Mode::Enabling | Mode::Disabling)
}

/// Whether a rewrite in `state` may store `value`: while enabling, empty or
/// sealed with the current kid; while disabling, nothing starting with `e1.`.
pub fn accepts_rewrite(state: &ModeState, value: &str) -> bool {
    let kid = state.kid.as_deref();
    match (state.mode, envelope::shape(value)) {
        (_, Shape::Empty) => true,
        (Mode::Enabling, Shape::Sealed { kid: k }) => Some(k) == kid,
        (Mode::Disabling, Shape::Plain) => true,
        _ => false,
    }
}

/// What the mode wants, in words, for an error message.
pub fn wants(state: &ModeState, rewrite: bool) -> String {
    let kid = state.kid.as_deref().unwrap_or("?");
    match (state.mode, rewrite) {
        (Mode::Off, _) => "encryption is off, so values must not start with \"e1.\"".into(),
        (Mode::Enabling | Mode::On, _) => format!(
            "values must be envelopes sealed with the current kid (e1.{kid}.<base64>) or empty"
        ),
        (Mode::Disabling, false) => format!(
            "values must be plaintext, envelopes sealed with the current kid (e1.{kid}.<base64>), or empty"
        ),
        (Mode::Disabling, true) => {
            "a rewrite while disabling stores plaintext: no value may start with \"e1.\"".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::*;

    const KID: &str = "0a1b2c3d";
    const NEW: &str = "99aa99aa";

    fn state(mode: Mode, kid: Option<&str>) -> ModeState {
        ModeState {
            mode,
            kid: kid.map(str::to_string),
            updated_at: None,
        }
    }

    fn change(mode: Mode, kid: Option<&str>) -> ModeChange {
        ModeChange {
            mode,
            kid: kid.map(str::to_string),
        }
    }

    fn clean() -> FieldCounts {
        FieldCounts::default()
    }

    fn sealed(kid: &str) -> String {
        use base64::Engine;
        format!(
            "e1.{kid}.{}",
            base64::engine::general_purpose::STANDARD.encode([3u8; 40])
        )
    }

    #[test]
    fn allowed_transitions_move_with_the_right_kid() {
        let cases = [
            (
                state(Off, None),
                change(Enabling, Some(KID)),
                Enabling,
                Some(KID),
            ),
            (state(Enabling, Some(KID)), change(On, None), On, Some(KID)),
            (
                state(Enabling, Some(KID)),
                change(On, Some(KID)),
                On,
                Some(KID),
            ),
            (
                state(Enabling, Some(KID)),
                change(Disabling, None),
                Disabling,
                Some(KID),
            ),
            (
                state(On, Some(KID)),
                change(Disabling, None),
                Disabling,
                Some(KID),
            ),
            (
                state(On, Some(KID)),
                change(Enabling, Some(NEW)),
                Enabling,
                Some(NEW),
            ),
            (state(Disabling, Some(KID)), change(Off, None), Off, None),
            (
                state(Disabling, Some(KID)),
                change(Enabling, None),
                Enabling,
                Some(KID),
            ),
        ];
        for (from, to, mode, kid) in cases {
            assert_eq!(
                plan(&from, &to, clean),
                Ok(Plan::Move {
                    mode,
                    kid: kid.map(str::to_string)
                }),
                "{from:?} -> {to:?}"
            );
        }
    }

    #[test]
    fn gates_count_what_remains() {
        let dirty = || FieldCounts {
            plaintext_fields: 3,
            ciphertext_fields: 5,
            obsolete_fields: 1,
        };
        let err = plan(&state(Enabling, Some(KID)), &change(On, None), dirty).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid encryption transition enabling -> on: 3 plaintext and 1 obsolete fields \
             remain; every atem must rewrite its vaults with kid 0a1b2c3d first"
        );
        let err = plan(&state(Disabling, Some(KID)), &change(Off, None), dirty).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid encryption transition disabling -> off: 5 ciphertext and 1 obsolete"
            ),
            "{err}"
        );
    }

    #[test]
    fn ungated_transitions_never_count() {
        let boom = || -> FieldCounts { panic!("counted") };
        assert!(plan(&state(Off, None), &change(Enabling, Some(KID)), boom).is_ok());
        assert!(plan(&state(On, Some(KID)), &change(Disabling, None), boom).is_ok());
    }

    #[test]
    fn the_current_mode_again_is_a_no_op_unless_the_kid_differs() {
        assert_eq!(
            plan(&state(Off, None), &change(Off, None), clean),
            Ok(Plan::Keep)
        );
        assert_eq!(
            plan(&state(On, Some(KID)), &change(On, Some(KID)), clean),
            Ok(Plan::Keep)
        );
        assert_eq!(
            plan(&state(On, Some(KID)), &change(On, None), clean),
            Ok(Plan::Keep)
        );
        let other = plan(&state(On, Some(KID)), &change(On, Some(NEW)), clean).unwrap_err();
        assert!(matches!(other, TransitionError::OtherKid { .. }));
        assert!(
            other
                .to_string()
                .starts_with("invalid encryption transition on -> on: the kid is 0a1b2c3d")
        );
        assert!(plan(&state(Off, None), &change(Off, Some(KID)), clean).is_err());
    }

    #[test]
    fn refused_transitions_name_both_modes() {
        let cases = [
            (state(Off, None), change(Enabling, None)),
            (state(Off, None), change(On, Some(KID))),
            (state(Off, None), change(Disabling, None)),
            (state(Enabling, Some(KID)), change(Off, None)),
            (state(Enabling, Some(KID)), change(On, Some(NEW))),
            (state(On, Some(KID)), change(Off, None)),
            (state(On, Some(KID)), change(Enabling, None)),
            (state(On, Some(KID)), change(Enabling, Some(KID))),
            (state(Disabling, Some(KID)), change(On, None)),
            (state(Disabling, Some(KID)), change(Enabling, Some(NEW))),
        ];
        for (from, to) in cases {
            let err = plan(&from, &to, clean).unwrap_err().to_string();
            let prefix = format!(
                "invalid encryption transition {} -> {}: ",
                from.mode, to.mode
            );
            assert!(err.starts_with(&prefix), "{err}");
        }
    }

    #[test]
    fn what_each_mode_accepts() {
        let mine = sealed(KID);
        let other = sealed(NEW);
        let rows = [
            // value, off, enabling/on, disabling
            ("", true, true, true),
            ("plain", true, false, true),
            (mine.as_str(), false, true, true),
            (other.as_str(), false, false, false),
            ("e1.broken", false, false, false),
        ];
        for (value, off, on, disabling) in rows {
            assert_eq!(accepts_write(&state(Off, None), value), off, "{value}");
            assert_eq!(
                accepts_write(&state(Enabling, Some(KID)), value),
                on,
                "{value}"
            );
            assert_eq!(accepts_write(&state(On, Some(KID)), value), on, "{value}");
            assert_eq!(
                accepts_write(&state(Disabling, Some(KID)), value),
                disabling,
                "{value}"
            );
        }
    }

    #[test]
    fn rewrites_store_only_the_target_form() {
        let mine = sealed(KID);
        let enabling = state(Enabling, Some(KID));
        let disabling = state(Disabling, Some(KID));
        assert!(accepts_rewrite(&enabling, &mine));
        assert!(accepts_rewrite(&enabling, ""));
        assert!(!accepts_rewrite(&enabling, "plain"));
        assert!(!accepts_rewrite(&enabling, &sealed(NEW)));
        assert!(accepts_rewrite(&disabling, "plain"));
        assert!(!accepts_rewrite(&disabling, &mine));
        assert!(!accepts_rewrite(&disabling, "e1.broken"));
        assert!(rewrite_runs_in(Enabling) && rewrite_runs_in(Disabling));
        assert!(!rewrite_runs_in(On) && !rewrite_runs_in(Off));
    }
}
