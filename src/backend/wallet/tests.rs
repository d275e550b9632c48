//! Unit tests of the wallet backend's delivery plan.
use serde_json::{json, Map, Value};

use crate::backend::job::JobPlanRequest;
use crate::backend::TerminalIdentity;

#[test]
fn the_plan_takes_oac_dac_and_file_orders_and_merges_parts_that_add_up_to_a_price() {
    let id = TerminalIdentity { store: "S".into(), terminal: "T".into(), operator: "o".into() };
    let rec = |id: u64, status: &str, reference: Option<&str>, merge: bool, app: &str, sum: i64| {
        json!({"id": id, "operation": "open-card", "status": status, "reference": reference,
            "result": if merge { json!({"merge": true}) } else { json!({}) },
            "request": {"appOrderId": app, "productId": "1010", "paySum": sum}})
    };
    let records = vec![
        rec(1, "approved", Some("O1"), false, "a", 450_000),
        rec(2, "approved", Some("O2"), false, "b", 450_000),
        rec(3, "approved", None, true, "m", 200_000),
        rec(4, "approved", None, true, "m", 250_000),
        rec(5, "approved", None, true, "u", 100_000),
    ];
    let catalog = json!([{"productId": "1010", "productPrice": 450_000}]);
    let body: Map<String, Value> = json!({"cancel": [2], "orders": [{"orderId": "F1", "accountType": "DAC"}]}).as_object().cloned().unwrap_or_default();
    let req = JobPlanRequest {
        journal_id: 9,
        operation: "delivery",
        identity: &id,
        trace: "000009",
        batch: "000001",
        public: &body,
        records: &records,
        catalog: Some(&catalog),
    };
    let plan = super::delivery::plan(&req).expect("plan");
    assert_eq!(
        plan.items,
        vec![json!({"orderId": "O1", "accountType": "OAC"}), json!({"orderId": "O2", "accountType": "DAC"}), json!({"orderId": "F1", "accountType": "DAC"})]
    );
    assert_eq!(plan.steps.len(), 1);
    assert_eq!((plan.steps[0]["paySum"].as_i64(), plan.steps[0]["terminalOrderId"].as_str()), (Some(450_000), Some("000009001")));
    assert_eq!(plan.report["unmatched"][0]["appOrderId"], "u");
    assert_eq!(plan.chunk_size, 2000);
    let bad: Map<String, Value> = json!({"orders": [{"orderId": "F1", "accountType": "XYZ"}]}).as_object().cloned().unwrap_or_default();
    assert!(super::delivery::plan(&JobPlanRequest { public: &bad, ..req }).is_err());
}
