//! The real control plane in the tests: `control_plane` starts etcd, kube-apiserver and
//! kube-controller-manager (built from their Go modules); `api` talks to it; `kubelet`
//! plays the kubelet's part; `install` installs pod-reloaded as a user does.

pub mod api;
pub mod argo;
pub mod control_plane;
pub mod install;
pub mod kubelet;
pub mod namespace;
pub mod story;

pub use api::Api;
pub use control_plane::{control_plane, ControlPlane};
pub use kubelet::{Kubelet, KubeletOptions};
pub use namespace::{wait_for, TestNamespace, ROLLOUT_DEADLINE};
