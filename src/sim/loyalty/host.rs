//! What the simulated loyalty host does with one request: the spec's checks, check-in, settlement, reversals and transactions.
use super::*;

/// One answer: status, message and further fields as raw JSON text (amounts written as exact decimals).
pub(super) struct Answer {
    pub(super) code: &'static str,
    pub(super) detail: Option<String>,
    pub(super) fields: Vec<(&'static str, String)>,
}

fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn yuan(fen: i64) -> String {
    money::fen_to_yuan(fen)
}

/// The simulator stands for a remote system with its own clock; it is not the engine's.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> String {
    chrono::Utc::now().timestamp_millis().to_string()
}

impl Answer {
    pub(super) fn ok(fields: Vec<(&'static str, String)>) -> Self {
        Answer { code: "00", detail: None, fields }
    }
    pub(super) fn fail(code: &'static str, detail: impl Into<String>) -> Self {
        Answer { code, detail: Some(detail.into()), fields: Vec::new() }
    }
    pub(super) fn to_json(&self) -> String {
        let (zh, _) = codes::lookup(self.code);
        let message = match &self.detail {
            Some(d) => format!("{zh} ({d})"),
            None => {
                if self.code == "00" {
                    "成功".to_string()
                } else {
                    zh.to_string()
                }
            }
        };
        let mut out = format!("{{\"status\":{},\"message\":{}", json_str(self.code), json_str(&message));
        for (k, v) in &self.fields {
            out.push_str(&format!(",{}:{}", json_str(k), v));
        }
        out.push('}');
        out
    }
}

pub(super) type Form = HashMap<String, String>;

pub(super) fn get<'a>(form: &'a Form, k: &str) -> &'a str {
    form.get(k).map(String::as_str).unwrap_or("")
}

fn six_digits(s: &str) -> Option<u32> {
    (s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn key3(t: &str, b: &str, tr: &str) -> Key3 {
    (t.to_string(), b.to_string(), tr.to_string())
}

fn add(m: &mut BTreeMap<String, i64>, k: &str, v: i64) {
    *m.entry(k.to_string()).or_insert(0) += v;
}

impl State {
    pub(super) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn serial(&mut self) -> String {
        self.next_serial += 1;
        format!("{:014}", self.next_serial)
    }

    /// Record an applied transaction and return its index.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &mut self,
        op: &str,
        form: &Form,
        card: &str,
        amount_fen: i64,
        cash_fen: i64,
        original: Option<usize>,
        tickets: Vec<(u64, i64)>,
    ) -> (usize, String, String) {
        let serial = self.serial();
        let trans_time = now_ms();
        let view = SimTx {
            op: op.into(),
            terminal: get(form, "terminalNo").into(),
            batch: get(form, "batchNo").into(),
            trace: get(form, "traceNo").into(),
            amount_fen,
            register_trace_no: form.get("registerTraceNo").cloned(),
            reversed: false,
            serial_no: serial.clone(),
            card_no: card.into(),
            voided: false,
            refunded: false,
        };
        let k = key3(&view.terminal, &view.batch, &view.trace);
        self.txs.push(Tx { view, trans_time: trans_time.clone(), cash_fen, original, tickets });
        let i = self.txs.len() - 1;
        self.applied.insert(k, i);
        self.by_serial.insert(serial.clone(), i);
        (i, serial, trans_time)
    }

    /// The batch totals of specs/README.md over applied, unreversed transactions.
    pub(super) fn totals(&self, terminal: &str, batch: &str) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for tx in self.txs.iter().map(|t| &t.view).filter(|v| v.terminal == terminal && v.batch == batch && !v.reversed) {
            let a = tx.amount_fen;
            match tx.op.as_str() {
                "consume" | "refund-cancel" => {
                    add(&mut m, "pointDebitCount", 1);
                    add(&mut m, "pointDebitAmount", a);
                }
                "ticket-consume" => {
                    add(&mut m, "ticketDebitCount", 1);
                    add(&mut m, "ticketDebitAmount", a);
                }
                "cancel" => {
                    add(&mut m, "pointCreditCount", 1);
                    add(&mut m, "pointCreditAmount", a);
                    add(&mut m, "cancelCount", 1);
                }
                "refund" => {
                    add(&mut m, "pointCreditCount", 1);
                    add(&mut m, "pointCreditAmount", a);
                    add(&mut m, "refundCount", 1);
                }
                "card-activate" => add(&mut m, "cardActiveCount", 1),
                _ => continue,
            }
            add(&mut m, "totalTransCount", 1);
        }
        m
    }

    pub(super) fn balance_fields(&self, card: &str) -> Vec<(&'static str, String)> {
        let b = self.cards.get(card).map(|c| c.balance_fen).unwrap_or(0);
        vec![("pointBalance", yuan(b)), ("avaiablePointBalance", yuan(b.max(0)))]
    }
}

impl LoyaltySim {
    pub(super) fn process(&self, w: &WireOp, reversal: bool, form: &Form) -> Answer {
        let mut st = State::lock(&self.state);
        st.requests += 1;
        let name = w.spec.name;
        for f in w.fields {
            let may_be_empty = (name == "settle" && f.name == "cardNo") || f.name == "oriRegisterTraceNo";
            match form.get(f.name) {
                None if f.required => return Answer::fail("30", format!("missing field {}", f.name)),
                Some(v) if f.required && v.is_empty() && !may_be_empty => return Answer::fail("30", format!("empty field {}", f.name)),
                _ => {}
            }
        }
        let store = get(form, "storeNo");
        let terminal = get(form, "terminalNo").to_string();
        match st.terms.get(&terminal) {
            Some(t) if t.store == store => {}
            Some(_) if st.stores.contains(store) => return Answer::fail("58", "terminal belongs to another store"),
            _ if !st.stores.contains(store) => return Answer::fail("03", "unknown store"),
            _ => return Answer::fail("97", "unknown terminal"),
        }
        // A check-in changes the batch and the keys, a settlement closes the batch: a terminal sends
        // either only when nothing else of it is in flight (a request beside it lands on either side).
        let beside = st.in_flight.get(&terminal).copied().unwrap_or(0).saturating_sub(1);
        if beside > 0 && (name == "checkin" || name == "settle") {
            st.violations.push(format!("{name} of {terminal} sent beside {beside} other requests of the terminal in flight"));
        }
        match (name, reversal) {
            ("checkin", _) => self.checkin(&mut st, &terminal),
            ("settle", _) => self.settle(&mut st, &terminal, form),
            (_, true) => self.reverse(&mut st, name, &terminal, form),
            _ => self.transact(&mut st, name, &terminal, form),
        }
    }

    /// Every check-in opens a new batch (the first one `first_batch`); the previous batch, settled or
    /// not, stays as it was: open for reversals and its settlement, closed to new transactions.
    fn checkin(&self, st: &mut State, terminal: &str) -> Answer {
        let first = self.cfg.first_batch.max(1);
        let Some(t) = st.terms.get_mut(terminal) else { return Answer::fail("97", "unknown terminal") };
        if t.opened {
            t.batch = if t.batch >= 999_999 { 1 } else { t.batch + 1 };
        } else {
            t.batch = first;
        }
        t.closed = false;
        t.opened = true;
        t.checkins += 1;
        t.batches.insert(t.batch);
        let keys = WorkingKeys { pin: rand::random(), mac: Some(rand::random()) };
        let wk = crypto::wrap_working_key(&self.cfg.master_key, &keys);
        t.keys = Some(keys);
        Answer::ok(vec![
            ("transTime", now_ms()),
            ("batchNo", json_str(&format!("{:06}", t.batch))),
            ("storeName", json_str(&self.cfg.store_name)),
            ("workingKey", json_str(&wk)),
        ])
    }

    /// Settle one named batch of the terminal: any batch a check-in opened and nobody settled yet.
    fn settle(&self, st: &mut State, terminal: &str, form: &Form) -> Answer {
        let batch = get(form, "batchNo").to_string();
        let Some(number) = six_digits(&batch) else { return Answer::fail("30", "batchNo must be 6 digits") };
        let k = (terminal.to_string(), batch.clone());
        if let Some(s) = st.settlements.get(&k) {
            // The same settlement again (its answer was lost): the first answer again. Other totals for
            // a settled batch: refused.
            let same = wire::TOTALS.iter().all(|&(wire_name, key, is_amount)| {
                let text = form.get(wire_name).or_else(|| form.get(key)).map(String::as_str).unwrap_or("");
                let v = if is_amount { money::yuan_to_fen(text).ok() } else { text.trim().parse::<i64>().ok() };
                v == Some(s.theirs.get(key).copied().unwrap_or(0))
            });
            if same {
                let flag = s.flag.clone();
                return Answer::ok(vec![("settleFlag", json_str(&flag))]);
            }
            let detail = format!("batch {batch} was settled before ({}) with other totals", s.flag);
            *st.settle_refused.entry(k).or_insert(0) += 1;
            return Answer::fail("94", detail);
        }
        let Some(t) = st.terms.get(terminal) else { return Answer::fail("97", "unknown terminal") };
        if !t.opened {
            return Answer::fail("77", "terminal has not checked in");
        }
        if !t.batches.contains(&number) {
            return Answer::fail("25", format!("batch {batch} was never opened by this terminal"));
        }
        let mut theirs = BTreeMap::new();
        for &(wire_name, key, is_amount) in wire::TOTALS {
            let text = form.get(wire_name).or_else(|| form.get(key)).map(String::as_str).unwrap_or("");
            let v = if is_amount { money::yuan_to_fen(text).ok() } else { text.trim().parse::<i64>().ok() };
            match v {
                Some(v) => {
                    if v != 0 {
                        theirs.insert(key.to_string(), v);
                    }
                }
                None => return Answer::fail("30", format!("bad total {wire_name}")),
            }
        }
        let ours = st.totals(terminal, &batch);
        let ours_nz: BTreeMap<String, i64> = ours.into_iter().filter(|(_, v)| *v != 0).collect();
        let flag = if theirs == ours_nz { "ss" } else { "ns" };
        if let Some(t) = st.terms.get_mut(terminal).filter(|t| t.batch == number) {
            t.closed = true;
            t.keys = None;
        }
        st.settlements
            .insert((terminal.to_string(), batch.clone()), SimSettlement { terminal: terminal.to_string(), batch, flag: flag.into(), theirs, ours: ours_nz });
        Answer::ok(vec![("settleFlag", json_str(flag))])
    }

    fn reverse(&self, st: &mut State, name: &str, terminal: &str, form: &Form) -> Answer {
        let (batch, trace) = (get(form, "batchNo"), get(form, "traceNo"));
        if six_digits(batch).is_none() || six_digits(trace).is_none() {
            return Answer::fail("30", "batchNo and traceNo are 6 digits");
        }
        let k = key3(terminal, batch, trace);
        if st.settlements.contains_key(&(terminal.to_string(), batch.to_string())) {
            st.violations.push(format!("{name} reversal of {terminal}/{batch}/{trace} after the batch was settled"));
            return Answer::fail("22", "batch already settled");
        }
        let Some(&i) = st.applied.get(&k) else {
            if !st.seen.contains(&k) {
                st.tombstones.insert(k);
            }
            return Answer::fail("25", "original not found");
        };
        let tx = &st.txs[i];
        if tx.view.op != name {
            let msg = format!("{name} reversal of {terminal}/{batch}/{trace} which is a {}", tx.view.op);
            st.violations.push(msg);
            return Answer::fail("22", "reversal does not match the original operation");
        }
        if tx.view.reversed {
            return Answer::fail("12", "already reversed");
        }
        let mut mismatch = None;
        if get(form, "cardNo") != tx.view.card_no {
            mismatch = Some("card");
        }
        if name == "consume" && money::yuan_to_fen(get(form, "pointAmount")).ok() != Some(tx.view.amount_fen) {
            mismatch = Some("amount");
        }
        if name == "consume" && (tx.view.voided || tx.view.refunded) {
            mismatch = Some("state (already voided or refunded)");
        }
        if let Some(what) = mismatch {
            st.violations.push(format!("{name} reversal of {terminal}/{batch}/{trace}: {what} differs from the original"));
            return Answer::fail("22", format!("reversal {what} does not match the original"));
        }
        let (card, amount, original, tickets) = (tx.view.card_no.clone(), tx.view.amount_fen, tx.original, tx.tickets.clone());
        match name {
            "consume" => {
                if let Some(c) = st.cards.get_mut(&card) {
                    c.balance_fen += amount;
                }
            }
            "cancel" => {
                if let Some(c) = st.cards.get_mut(&card) {
                    c.balance_fen -= amount;
                }
                if let Some(o) = original {
                    st.txs[o].view.voided = false;
                }
            }
            "ticket-consume" => {
                if let Some(c) = st.cards.get_mut(&card) {
                    for (id, n) in tickets {
                        if let Some(t) = c.tickets.iter_mut().find(|t| t.id == id) {
                            t.num += n;
                        }
                    }
                }
            }
            _ => return Answer::fail("12", "no reversal for this operation"),
        }
        st.txs[i].view.reversed = true;
        Answer::ok(Vec::new())
    }

    fn transact(&self, st: &mut State, name: &str, terminal: &str, form: &Form) -> Answer {
        let Some(t) = st.terms.get(terminal) else { return Answer::fail("97", "unknown terminal") };
        let Some(keys) = t.keys.clone().filter(|_| !t.closed) else {
            st.declined_77 += 1;
            return Answer::fail("77", "terminal has not checked in");
        };
        let current = t.batch;
        let (batch, trace) = (get(form, "batchNo").to_string(), get(form, "traceNo").to_string());
        // send-verify-code may omit its batch; everything else must be in the current one. Outside
        // it, nothing is looked at or applied: the terminal must check in (and so learn the batch).
        if (!batch.is_empty() || name != "send-verify-code") && six_digits(&batch) != Some(current) {
            st.declined_77 += 1;
            return Answer::fail("77", format!("batch {batch} is not the current batch {current:06}: check in"));
        }
        if !trace.is_empty() {
            if six_digits(&trace).is_none() {
                return Answer::fail("30", "traceNo must be 6 digits");
            }
            let k = key3(terminal, &batch, &trace);
            if st.tombstones.contains(&k) {
                return Answer::fail("12", "this trace was reversed before it arrived");
            }
            if !st.seen.insert(k) {
                st.reused += 1;
                st.violations.push(format!("{name}: duplicate trace {terminal}/{batch}/{trace}"));
                return Answer::fail("94", "duplicate trace in this batch");
            }
        }
        let card_no = get(form, "cardNo").to_string();
        let needs_card = name != "send-verify-code";
        if needs_card && !st.cards.contains_key(&card_no) {
            return Answer::fail("14", "unknown card");
        }
        match name {
            "card-query" => {
                let c = &st.cards[&card_no];
                let vouchers: Vec<String> = c
                    .tickets
                    .iter()
                    .filter(|t| t.kind == "03")
                    .map(|t| format!("{{\"id\":{},\"amount\":{},\"num\":{},\"name\":{}}}", t.id, yuan(t.amount_fen), t.num, json_str(&t.name)))
                    .collect();
                let mut f = st.balance_fields(&card_no);
                f.extend([
                    ("transTime", now_ms()),
                    ("vaucher", format!("[{}]", vouchers.join(","))),
                    ("idType", json_str("01")),
                    ("idNo", json_str("110101199001011234")),
                    ("name", json_str("张三")),
                    ("gender", json_str("01")),
                    ("mobileNo", json_str(&c.mobile_no)),
                    ("grade", json_str(if c.active { "1" } else { "0" })),
                    ("address", json_str("")),
                    ("email", json_str("member@example.com")),
                ]);
                Answer::ok(f)
            }
            "ticket-query" => {
                let c = &st.cards[&card_no];
                let items: Vec<String> = c
                    .tickets
                    .iter()
                    .map(|t| {
                        format!(
                            "{{\"id\":{},\"type\":{},\"amount\":{},\"name\":{},\"num\":{}}}",
                            t.id,
                            json_str(&t.kind),
                            yuan(t.amount_fen),
                            json_str(&t.name),
                            t.num
                        )
                    })
                    .collect();
                let mut f = st.balance_fields(&card_no);
                f.extend([("transTime", now_ms()), ("ticket", format!("[{}]", items.join(",")))]);
                Answer::ok(f)
            }
            "send-verify-code" => {
                st.verify_codes.insert(get(form, "mobileNo").to_string(), self.cfg.verify_code.clone());
                Answer::ok(Vec::new())
            }
            "consume" => self.consume(st, &keys, form, &card_no),
            "cancel" => Self::cancel(st, terminal, form, &card_no),
            "refund" => Self::refund(st, form, &card_no),
            "refund-cancel" => Self::refund_cancel(st, form, &card_no),
            "ticket-consume" => Self::ticket_consume(st, form, &card_no),
            "card-activate" => {
                let mobile = get(form, "mobileNo").to_string();
                if st.cards[&card_no].active {
                    return Answer::fail("22", "card already active");
                }
                if st.verify_codes.get(&mobile).map(String::as_str) != Some(get(form, "verifyCode")) {
                    return Answer::fail("55", "wrong verify code");
                }
                if let Some(c) = st.cards.get_mut(&card_no) {
                    c.active = true;
                    c.mobile_no = mobile;
                }
                let (_, serial, time) = st.record("card-activate", form, &card_no, 0, 0, None, Vec::new());
                Answer::ok(vec![("serialNo", json_str(&serial)), ("transTime", time)])
            }
            _ => Answer::fail("12", "unsupported operation"),
        }
    }

    fn consume(&self, st: &mut State, keys: &WorkingKeys, form: &Form, card_no: &str) -> Answer {
        let c = &st.cards[card_no];
        if !c.active {
            return Answer::fail("15", "card not activated");
        }
        let (Ok(points), Ok(cash)) = (money::yuan_to_fen(get(form, "pointAmount")), money::yuan_to_fen(get(form, "cashAmount"))) else {
            return Answer::fail("30", "pointAmount and cashAmount are yuan with 2 decimals");
        };
        if points < 0 || cash < 0 {
            return Answer::fail("13", "negative amount");
        }
        if let Some(v) = form.get("vaucher") {
            if serde_json::from_str::<Vec<Value>>(v).is_err() {
                return Answer::fail("30", "vaucher must be a JSON list");
            }
        }
        match form.get("password") {
            Some(block) => match crypto::decrypt_pin_block(&keys.pin, block, card_no) {
                Ok(pin) if pin == c.pin => {}
                Ok(_) => return Answer::fail("55", "wrong PIN"),
                Err(_) => return Answer::fail("99", "PIN block does not decrypt under this terminal's PIN key"),
            },
            None if !c.pin.is_empty() => return Answer::fail("55", "PIN required"),
            None => {}
        }
        if c.balance_fen < points {
            return Answer::fail("51", "insufficient balance");
        }
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen -= points;
        }
        let (_, serial, time) = st.record("consume", form, card_no, points, cash, None, Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("usePoint", yuan(points)), ("persentPoint", yuan(0)), ("advertisement", json_str("欢迎参加 posgate 演示活动"))]);
        Answer::ok(f)
    }

    fn cancel(st: &mut State, terminal: &str, form: &Form, card_no: &str) -> Answer {
        let k = key3(terminal, get(form, "oriBatchNo"), get(form, "oriTraceNo"));
        let Some(&o) = st.applied.get(&k) else { return Answer::fail("25", "original not found") };
        let orig = &st.txs[o];
        let v = &orig.view;
        if v.op != "consume" || v.reversed || v.voided || v.refunded {
            return Answer::fail("22", "original is not a live consume");
        }
        if v.card_no != card_no || orig.trans_time != get(form, "oriTransTime") {
            return Answer::fail("22", "card or oriTransTime does not match the original");
        }
        if let Some(r) = form.get("oriRegisterTraceNo").filter(|r| !r.is_empty()) {
            if v.register_trace_no.as_deref() != Some(r.as_str()) {
                return Answer::fail("22", "oriRegisterTraceNo does not match the original");
            }
        }
        if st.settlements.contains_key(&(v.terminal.clone(), v.batch.clone())) {
            return Answer::fail("22", "original batch is settled: refund it instead");
        }
        let amount = v.amount_fen;
        st.txs[o].view.voided = true;
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen += amount;
        }
        let (_, serial, time) = st.record("cancel", form, card_no, amount, 0, Some(o), Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("usePoint", yuan(amount)), ("persentPoint", yuan(0))]);
        Answer::ok(f)
    }

    fn refund(st: &mut State, form: &Form, card_no: &str) -> Answer {
        let Some(&o) = st.by_serial.get(get(form, "oriSerialNo")) else { return Answer::fail("25", "original not found") };
        let orig = &st.txs[o];
        let v = &orig.view;
        if v.op != "consume" || v.reversed || v.voided || v.refunded {
            return Answer::fail("22", "original is not a live consume");
        }
        if v.card_no != card_no || v.register_trace_no.as_deref().unwrap_or("") != get(form, "oriRegisterTraceNo") {
            return Answer::fail("22", "card or oriRegisterTraceNo does not match the original");
        }
        let date = get(form, "oriTransDate");
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Answer::fail("30", "oriTransDate must be YYYYMMDD");
        }
        let (amount, cash) = (v.amount_fen, orig.cash_fen);
        st.txs[o].view.refunded = true;
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen += amount;
        }
        let (_, serial, time) = st.record("refund", form, card_no, amount, 0, Some(o), Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("returnPoint", yuan(amount)), ("returnPersentPoint", yuan(0)), ("returnCash", yuan(cash)), ("supplyCash", yuan(0))]);
        Answer::ok(f)
    }

    fn refund_cancel(st: &mut State, form: &Form, card_no: &str) -> Answer {
        let Some(&o) = st.by_serial.get(get(form, "oriSerialNo")) else { return Answer::fail("25", "original not found") };
        let orig = &st.txs[o];
        let v = &orig.view;
        if v.op != "refund" || v.reversed || v.voided {
            return Answer::fail("22", "original is not a live refund");
        }
        if v.card_no != card_no || v.batch != get(form, "oriBatchNo") || v.trace != get(form, "oriTraceNo") || orig.trans_time != get(form, "oriTransTime") {
            return Answer::fail("22", "card, oriBatchNo, oriTraceNo or oriTransTime does not match the original");
        }
        let (amount, sale) = (v.amount_fen, orig.original);
        if st.cards[card_no].balance_fen < amount {
            return Answer::fail("51", "insufficient balance");
        }
        st.txs[o].view.voided = true;
        if let Some(s) = sale {
            st.txs[s].view.refunded = false;
        }
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen -= amount;
        }
        let (_, serial, time) = st.record("refund-cancel", form, card_no, amount, 0, Some(o), Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("usePoint", yuan(amount)), ("persentPoint", yuan(0))]);
        Answer::ok(f)
    }

    fn ticket_consume(st: &mut State, form: &Form, card_no: &str) -> Answer {
        if !st.cards[card_no].active {
            return Answer::fail("15", "card not activated");
        }
        let Ok(items) = serde_json::from_str::<Vec<serde_json::Map<String, Value>>>(get(form, "ticket")) else {
            return Answer::fail("30", "ticket must be a JSON list of objects");
        };
        let mut wanted: Vec<(u64, i64)> = Vec::new();
        for item in &items {
            let id = match item.get("id") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            let num = item.get("num").and_then(Value::as_i64).filter(|n| *n > 0);
            let (Some(id), Some(num)) = (id, num) else { return Answer::fail("30", "each ticket needs an id and a positive num") };
            wanted.push((id, num));
        }
        let c = &st.cards[card_no];
        let mut amount = 0i64;
        for &(id, num) in &wanted {
            let Some(t) = c.tickets.iter().find(|t| t.id == id) else { return Answer::fail("56", format!("no ticket {id} on this card")) };
            let already: i64 = wanted.iter().filter(|(i, _)| *i == id).map(|(_, n)| n).sum();
            if t.num < already {
                return Answer::fail("51", format!("not enough of ticket {id}"));
            }
            amount += t.amount_fen * num;
        }
        if let Some(c) = st.cards.get_mut(card_no) {
            for &(id, num) in &wanted {
                if let Some(t) = c.tickets.iter_mut().find(|t| t.id == id) {
                    t.num -= num;
                }
            }
        }
        let (_, serial, time) = st.record("ticket-consume", form, card_no, amount, 0, None, wanted);
        Answer::ok(vec![("serialNo", json_str(&serial)), ("advertisement", json_str("券已使用")), ("transTime", time)])
    }
}
