//! Learning a redeem's fate without resending it: getPrize and the paying station's awardDetail.
use super::reconcile::{day_params, detail_rows, text, ticket_of};
use super::*;

/// Resends in a row that settle nothing before a recovery attempt also asks the host by query.
pub const QUERY_AFTER: u32 = 3;

impl LotteryBackend {
    /// The station a recovery query runs on: the leased one, or any free one (bounded wait).
    async fn query_station(&self, tx: &TxRequest<'_>) -> Result<(Option<StationGuard>, usize), BackendError> {
        if let Some(i) = tx.slot.and_then(|id| self.pool.index_of(id)) {
            return Ok((None, i));
        }
        let g = self.pool.acquire(Some(self.timeout)).await.map_err(|e| err(Stage::NotSent, e))?;
        let i = g.index();
        Ok((Some(g), i))
    }

    /// Learn a redeem's outcome from the host without resending it: getPrize for the bar code (a prize,
    /// or 3202: no redemption record), then the paying station's awardDetail for that day: the row with
    /// our `transacId` means ours won. `Again` while the host cannot say.
    pub(super) async fn query_outcome(&self, tx: &TxRequest<'_>, why: &str) -> Result<Recovered, BackendError> {
        let transac = transac_id(&self.merchant, tx.created_at, tx.trace, self.tz).map_err(|e| err(Stage::NotSent, e))?;
        let bar = tx.vault.get("barCode").and_then(Value::as_str).ok_or_else(|| err(Stage::NotSent, "the sealed bar code is missing: cannot query"))?;
        let (guard, own) = self.query_station(tx).await?;
        let own_station = &self.pool.stations()[own];
        let a = self.call(own_station, "proxy/validate/getPrize", &[("barCode", Value::from(bar))], tx.journal_id).await?;
        let base = |verdict: Verdict, code: &str, message_en: String, mut fields: Map<String, Value>| {
            let (zh, _, _) = codes::lookup(code);
            fields.insert("transacId".into(), Value::from(transac.as_str()));
            fields.insert("resolved_by".into(), Value::from("query"));
            fields.insert("query_reason".into(), Value::from(why));
            Reply {
                verdict,
                code: code.into(),
                message: if a.msg.is_empty() { zh.to_string() } else { a.msg.clone() },
                message_en,
                fields,
                reference: None,
                trans_time: None,
                amount_fen: None,
            }
        };
        if a.ret.trim() == "3202" {
            let mut f = Map::new();
            f.insert("station".into(), Value::from(own_station.id.as_str()));
            return Ok(Recovered::Settled(base(
                Verdict::Declined,
                "3202",
                "not redeemed: the host has no redemption record of this ticket (getPrize 3202)".into(),
                f,
            )));
        }
        if !a.success {
            return Ok(Recovered::Again(format!("getPrize answered ret {} ({}): cannot tell yet", a.ret, scrub(&a.msg))));
        }
        let prize = content_fields(&a.content, "proxy/validate/getPrize");
        let paid_at = prize.get("stationId").and_then(wire::text_of).unwrap_or_default();
        let award_time = prize.get("awardTime").and_then(wire::text_of).unwrap_or_default();
        let mut f = Map::new();
        f.insert("awardStation".into(), Value::from(paid_at.as_str()));
        f.insert("awardTime".into(), Value::from(award_time.as_str()));
        for k in ["level", "prize"] {
            if let Some(v) = prize.get(k) {
                f.insert(k.into(), v.clone());
            }
        }
        let Some(pi) = self.pool.index_of(&paid_at) else {
            f.insert("station".into(), Value::from(own_station.id.as_str()));
            f.remove("prize");
            return Ok(Recovered::Settled(base(
                Verdict::Declined,
                "1307",
                format!("already redeemed at station {paid_at} at {award_time}, not one of this profile's stations: another transacId won"),
                f,
            )));
        };
        // awardDetail answers for the asking station only: ask the station that paid it.
        let day = award_time
            .get(..10)
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .ok_or_else(|| err(Stage::Unknown, format!("getPrize awardTime {award_time:?} is not YYYY-MM-DD HH:MM:SS")))?;
        let other;
        let paid_station = if pi == own {
            own_station
        } else {
            drop(guard);
            other = self.station_guard(pi).await?;
            other.station()
        };
        let d = self.call(paid_station, wire::AWARD_DETAIL, &day_params(day, "00000", "00000"), tx.journal_id).await?;
        if !d.success {
            return Ok(Recovered::Again(format!("awardDetail at station {paid_at} answered ret {} ({})", d.ret, scrub(&d.msg))));
        }
        let rows = detail_rows(&d.content);
        f.insert("station".into(), Value::from(paid_at.as_str()));
        if let Some(row) = rows.iter().find(|r| text(r.get("transacId")) == transac) {
            let ticket = ticket_of(row);
            f.insert("ticketNo".into(), Value::from(ticket.as_str()));
            f.insert("gameNo".into(), Value::from(text(row.get("gameNo"))));
            f.insert("batchNo".into(), Value::from(text(row.get("batchNo"))));
            f.insert("recovered".into(), Value::Bool(true));
            let amount = f.get("prize").and_then(Value::as_i64);
            let mut r =
                base(Verdict::Approved, "10000", format!("redeemed by this very request at station {paid_at} at {award_time} (learnt by query): paid once"), f);
            r.reference = Some(ticket);
            r.trans_time = Some(award_time);
            r.amount_fen = amount;
            return Ok(Recovered::Settled(r));
        }
        let winners: Vec<String> =
            rows.iter().filter(|r| text(r.get("time")) == award_time).map(|r| text(r.get("transacId"))).filter(|t| !t.is_empty()).collect();
        f.insert("winning_transacId".into(), json!(winners));
        f.remove("prize");
        Ok(Recovered::Settled(base(
            Verdict::Declined,
            "1307",
            format!(
                "already redeemed at station {paid_at} at {award_time} by another transacId ({}), not {transac}",
                if winners.is_empty() { "not listed".to_string() } else { winners.join(", ") }
            ),
            f,
        )))
    }

    /// Count one more resend that settled nothing; true when it is time to ask by query as well.
    pub(super) fn resend_failed(&self, journal_id: u64) -> bool {
        let mut m = self.resend_failures.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        let n = m.entry(journal_id).or_insert(0);
        *n += 1;
        *n >= QUERY_AFTER
    }

    pub(super) fn resend_settled(&self, journal_id: u64) {
        self.resend_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&journal_id);
    }
}
