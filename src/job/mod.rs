//! The CI job: `start` (warm start, archive restore, snapshot), the user's
//! build, `finish` (push, warm-start manifest, archive save). The policy
//! lives here: the re-save rule and `<key>-g<time>` keys, what `start`
//! keeps for `finish`, that the push filters also apply to the archive,
//! what the warm manifest lists. Front ends build a [`JobConfig`] and
//! watch through an [`Observer`].

pub mod config;
pub mod config_file;
pub mod failed;
pub mod finish;
pub mod key;
pub mod keys;
pub mod observer;
pub mod purge;
pub mod push;
pub mod read;
pub mod restore;
pub mod save;
pub mod scope;
pub mod state;
pub mod warm;
pub mod watch;

pub use config::{
    ArchiveConfig, FilterConfig, JobConfig, KeySpec, PushConfig, ReadConfig, WarmConfig,
};
pub use finish::{finish, Finished, Step};
pub use observer::Observer;
pub use restore::{start, Started};
pub use state::{ArchiveFacts, Restored};
