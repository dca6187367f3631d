//! Transactions and deletes by prefix: [`Client::txn`], the typed builder
//! [`Client::transaction`], and [`Client::delete_prefix`]; and the transaction
//! types, shared with the server.

pub use kvstore_core::txn::{
    Compare, CompareOp, Deleted, Got, Listed, Target, Txn, TxnOp, TxnResponse, TxnResult,
};
use kvstore_core::wire::DeletePrefixResult;

use crate::client::{check, decode, query_value};
use crate::{Client, Error};

impl Client {
    /// Runs `txn` (see [`kvstore_core::txn`]): a failed compare is no error, but
    /// an answer with `succeeded: false`.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, Error> {
        let body = serde_json::to_vec(txn).map_err(|e| Error::Decode(e.to_string()))?;
        let res = self
            .http
            .post(format!("{}/v1/txn", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        decode(check(res, "").await?).await
    }

    /// A transaction to build and [`TxnBuilder::commit`]:
    ///
    /// ```no_run
    /// # async fn f(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// use kvstore_client::txn::{Compare, CompareOp, TxnOp};
    /// let answer = client
    ///     .transaction()
    ///     .when(Compare::mod_revision("acct/1", CompareOp::Equal, 5))
    ///     .and_then(TxnOp::put("acct/1", "90"))
    ///     .and_then(TxnOp::put("acct/2", "110"))
    ///     .or_else(TxnOp::get("acct/1"))
    ///     .commit()
    ///     .await?;
    /// if !answer.succeeded {
    ///     // Someone wrote acct/1 since revision 5: `answer.results[0]` holds it now.
    /// }
    /// # Ok(()) }
    /// ```
    pub fn transaction(&self) -> TxnBuilder<'_> {
        TxnBuilder {
            client: self,
            txn: Txn::default(),
        }
    }

    /// Deletes every key under `prefix` at one revision; an empty prefix is
    /// refused (see [`Client::delete_all`]).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<DeletePrefixResult, Error> {
        let url = format!("{}/v1/kv?prefix={}", self.base, query_value(prefix));
        let res = self.http.delete(url).send().await?;
        decode(check(res, prefix).await?).await
    }

    /// Deletes every key of the store at one revision.
    pub async fn delete_all(&self) -> Result<DeletePrefixResult, Error> {
        let res = self
            .http
            .delete(format!("{}/v1/kv?all=true", self.base))
            .send()
            .await?;
        decode(check(res, "").await?).await
    }
}

/// A transaction under construction (from [`Client::transaction`]).
#[derive(Debug)]
#[must_use = "a transaction does nothing until committed"]
pub struct TxnBuilder<'c> {
    client: &'c Client,
    txn: Txn,
}

impl TxnBuilder<'_> {
    /// Adds a compare: `success` runs only if all hold.
    pub fn when(mut self, compare: Compare) -> Self {
        self.txn.compare.push(compare);
        self
    }

    /// Adds an op to run when every compare holds.
    pub fn and_then(mut self, op: TxnOp) -> Self {
        self.txn.success.push(op);
        self
    }

    /// Adds an op to run when a compare fails.
    pub fn or_else(mut self, op: TxnOp) -> Self {
        self.txn.failure.push(op);
        self
    }

    /// The transaction built so far.
    pub fn build(self) -> Txn {
        self.txn
    }

    /// Sends it.
    pub async fn commit(self) -> Result<TxnResponse, Error> {
        self.client.txn(&self.txn).await
    }
}
