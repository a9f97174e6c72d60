//! Reading the engine's intent journals, as an operator would with
//! `kubectl get configmap -l provisioner.rs/journal`.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use provisioner_core::journal;

/// The journals of provisioner name `name` (any instance), in every namespace.
pub async fn journals_of(client: &Client, name: &str) -> Result<Vec<ConfigMap>, kube::Error> {
    let lp = ListParams::default().labels(&format!("{}=true", journal::LABEL));
    let all = Api::<ConfigMap>::all(client.clone()).list(&lp).await?;
    Ok(all
        .items
        .into_iter()
        .filter(|cm| cm.annotations().get(journal::OWNER_ANNOTATION).and_then(|o| o.split(' ').next()) == Some(name))
        .collect())
}

/// The PV names the journals of `name` hold entries for.
pub async fn entries_of(client: &Client, name: &str) -> Result<BTreeSet<String>, kube::Error> {
    let mut out = BTreeSet::new();
    for cm in journals_of(client, name).await? {
        out.extend(journal::Contents::read(cm.data.as_ref().unwrap_or(&Default::default())).entries.into_keys());
    }
    Ok(out)
}
