//! Key-encryption keys in an HSM, through PKCS#11 (the `cryptoki` crate).
//!
//! Each KEK is an AES-256 secret key object on the token, created there (`C_GenerateKey`),
//! never extractable, never readable (`CKA_SENSITIVE`), labelled `brankas-kek-<n>`; the
//! highest `n` is current. A data key (or the system root) is wrapped by AES-GCM *inside the
//! token* under the KEK, with a fresh 96-bit nonce and the wrap's context as associated
//! data: what leaves the token is `[1] ‖ nonce ‖ ciphertext ‖ tag`. So a copy of the
//! database, the blob store and every server's disk still holds only wrapped keys, and an
//! operator with shell access holds no key to copy: unwrapping needs the token and its PIN,
//! which the provider takes from a file or the environment, never the command line.
//!
//! Tested against SoftHSM2 (Debian's `softhsm2`, which `tests/services/softhsm.sh` installs):
//! each test makes a token of its own with `softhsm2-util`. Not yet on the command line
//! (`--pkcs11-module`, `--pkcs11-token`, `--pkcs11-pin-file`: issue 17).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::{KekId, KeyProvider, VaultError};

const LABEL_PREFIX: &str = "brankas-kek-";
/// Format byte of a wrap made here.
const FORMAT: u8 = 1;
const NONCE: usize = 12;
/// Sessions kept open at most (one per concurrent wrap or unwrap).
const SESSIONS: usize = 8;

fn hsm(e: cryptoki::error::Error) -> VaultError {
    // PKCS#11 return values name the failure, never key material.
    VaultError::KeyFile(format!("PKCS#11: {e}"))
}

/// Where the token is and how to log in. The PIN is kept in a secret string (zeroized, never
/// printed) and read from a file or the environment by the caller.
pub struct Pkcs11Config {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: std::path::PathBuf,
    /// The label of the token holding the KEKs.
    pub token: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config").field("module", &self.module).field("token", &self.token).finish_non_exhaustive()
    }
}

impl Pkcs11Config {
    /// The PIN from a file (its first line; the file should be readable by the server's
    /// user only).
    pub fn pin_from_file(path: &Path) -> Result<Zeroizing<String>, VaultError> {
        let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| VaultError::KeyFile(format!("reading the PIN file {}: {e}", path.display())))?);
        let pin = raw.lines().next().unwrap_or_default().trim().to_string();
        if pin.is_empty() {
            return Err(VaultError::KeyFile(format!("the PIN file {} is empty", path.display())));
        }
        Ok(Zeroizing::new(pin))
    }
}

/// KEKs on a PKCS#11 token.
pub struct Pkcs11Provider {
    ctx: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    sessions: Mutex<Vec<Session>>,
    keks: RwLock<BTreeMap<KekId, ObjectHandle>>,
}

impl std::fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Provider").field("slot", &self.slot).finish_non_exhaustive()
    }
}

impl Pkcs11Provider {
    /// Logs in to the token and finds its KEKs; with `create`, makes the first one when the
    /// token has none (a new deployment), otherwise a token without KEKs is an error.
    pub fn open(cfg: &Pkcs11Config, create: bool) -> Result<Self, VaultError> {
        let ctx = Pkcs11::new(&cfg.module).map_err(hsm)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(hsm(e)),
        }
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(hsm)? {
            if ctx.get_token_info(s).map_err(hsm)?.label().trim_end() == cfg.token {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| VaultError::KeyFile(format!("no PKCS#11 token labelled {:?}", cfg.token)))?;
        let p = Pkcs11Provider { ctx, slot, pin: AuthPin::from(cfg.pin.as_str().to_string()), sessions: Mutex::new(Vec::new()), keks: RwLock::new(BTreeMap::new()) };
        p.reload()?;
        if p.keks.read().map_err(|_| poisoned())?.is_empty() {
            if !create {
                return Err(VaultError::KeyFile(format!("the PKCS#11 token {:?} holds no Brankas key-encryption key", cfg.token)));
            }
            p.rotate()?;
        }
        Ok(p)
    }

    /// Runs `f` on a logged-in session of the pool.
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, VaultError>) -> Result<T, VaultError> {
        let pooled = self.sessions.lock().map_err(|_| poisoned())?.pop();
        let s = match pooled {
            Some(s) => s,
            None => {
                let s = self.ctx.open_rw_session(self.slot).map_err(hsm)?;
                match s.login(UserType::User, Some(&self.pin)) {
                    // Login is per application: a second session is already logged in.
                    Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
                    Err(e) => return Err(hsm(e)),
                }
                s
            }
        };
        let out = f(&s);
        if let Ok(mut pool) = self.sessions.lock()
            && pool.len() < SESSIONS
        {
            pool.push(s);
        }
        out
    }

    fn handle(&self, kek: KekId) -> Result<ObjectHandle, VaultError> {
        if let Some(h) = self.keks.read().map_err(|_| poisoned())?.get(&kek) {
            return Ok(*h);
        }
        // Perhaps rotated by another process since.
        self.reload()?;
        self.keks.read().map_err(|_| poisoned())?.get(&kek).copied().ok_or(VaultError::UnknownKek(kek))
    }
}

fn poisoned() -> VaultError {
    VaultError::KeyFile("PKCS#11 provider state poisoned".into())
}

fn label_of(id: KekId) -> Vec<u8> {
    format!("{LABEL_PREFIX}{}", id.0).into_bytes()
}

impl KeyProvider for Pkcs11Provider {
    fn current(&self) -> Result<KekId, VaultError> {
        self.keks.read().map_err(|_| poisoned())?.keys().next_back().copied().ok_or_else(|| VaultError::KeyFile("no key-encryption key on the token".into()))
    }

    fn wrap(&self, kek: KekId, key: &[u8], context: &[u8]) -> Result<Vec<u8>, VaultError> {
        let h = self.handle(kek)?;
        self.with_session(|s| {
            let mut nonce = [0u8; NONCE];
            aws_lc_rs::rand::fill(&mut nonce)?;
            let mut iv = nonce;
            let params = GcmParams::new(&mut iv, context, 128.into()).map_err(hsm)?;
            let sealed = s.encrypt(&Mechanism::AesGcm(params), h, key).map_err(hsm)?;
            let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
            out.push(FORMAT);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
            Ok(out)
        })
    }

    fn unwrap(&self, kek: KekId, wrapped: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if wrapped.len() < 1 + NONCE + 16 || wrapped[0] != FORMAT {
            return Err(VaultError::Integrity);
        }
        let h = self.handle(kek)?;
        self.with_session(|s| {
            let mut iv: [u8; NONCE] = wrapped[1..1 + NONCE].try_into().map_err(|_| VaultError::Integrity)?;
            let params = GcmParams::new(&mut iv, context, 128.into()).map_err(hsm)?;
            // A failed tag (tampering, another context, another key) is an integrity failure.
            s.decrypt(&Mechanism::AesGcm(params), h, &wrapped[1 + NONCE..]).map(Zeroizing::new).map_err(|_| VaultError::Integrity)
        })
    }

    fn rotate(&self) -> Result<KekId, VaultError> {
        self.reload()?;
        let next = KekId(self.keks.read().map_err(|_| poisoned())?.keys().next_back().map_or(1, |k| k.0 + 1));
        let h = self.with_session(|s| {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label_of(next)),
                Attribute::Id(next.0.to_be_bytes().to_vec()),
            ];
            s.generate_key(&Mechanism::AesKeyGen, &template).map_err(hsm)
        })?;
        self.keks.write().map_err(|_| poisoned())?.insert(next, h);
        Ok(next)
    }

    fn reload(&self) -> Result<(), VaultError> {
        let found = self.with_session(|s| {
            let handles = s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), Attribute::Token(true)]).map_err(hsm)?;
            let mut out = BTreeMap::new();
            for h in handles {
                for a in s.get_attributes(h, &[AttributeType::Label]).map_err(hsm)? {
                    if let Attribute::Label(l) = a
                        && let Some(n) = std::str::from_utf8(&l).ok().and_then(|l| l.strip_prefix(LABEL_PREFIX)).and_then(|n| n.parse::<u32>().ok())
                    {
                        out.insert(KekId(n), h);
                    }
                }
            }
            Ok(out)
        })?;
        *self.keks.write().map_err(|_| poisoned())? = found;
        Ok(())
    }

    fn kek_ids(&self) -> Result<Vec<KekId>, VaultError> {
        Ok(self.keks.read().map_err(|_| poisoned())?.keys().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SoftHSM2 token made for the test (`softhsm2-util`), in a directory of its own, or
    /// `None` (with a note) when SoftHSM2 is not installed and `BRANKAS_REQUIRE_SOFTHSM` is
    /// not set (CI sets it).
    fn token(dir: &Path, label: &str) -> Option<Pkcs11Config> {
        let module = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"].into_iter().map(std::path::PathBuf::from).find(|p| p.exists());
        let Some(module) = module else {
            assert!(std::env::var_os("BRANKAS_REQUIRE_SOFTHSM").is_none(), "BRANKAS_REQUIRE_SOFTHSM is set but SoftHSM2 is not installed");
            eprintln!("pkcs11: SoftHSM2 not installed (apt-get install softhsm2); skipped");
            return None;
        };
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display())).unwrap();
        // SAFETY: set before the module is loaded and initialized by this test; the tests of
        // this module run one at a time (`TOKEN_LOCK`), and nothing else reads it.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        let out = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label, "--pin", "1234", "--so-pin", "5678"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Some(Pkcs11Config { module, token: label.into(), pin: Zeroizing::new("1234".into()) })
    }

    /// SoftHSM2 reads its configuration once per process: the tests take turns.
    static TOKEN_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn keys_are_wrapped_inside_the_token_and_never_leave_it() {
        let _turn = TOKEN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let Some(cfg) = token(dir.path(), "brankas-test") else { return };
        // A token without KEKs is refused unless a deployment is being created.
        assert!(Pkcs11Provider::open(&cfg, false).is_err());
        let p = Pkcs11Provider::open(&cfg, true).unwrap();
        assert_eq!(p.current().unwrap(), KekId(1));
        let dek = [7u8; 32];
        let w = p.wrap(KekId(1), &dek, b"partition-a").unwrap();
        assert_eq!(w.len(), 1 + NONCE + 32 + 16);
        assert!(!w.windows(8).any(|x| x == &dek[..8]), "the key is not in the wrap");
        assert_eq!(&p.unwrap(KekId(1), &w, b"partition-a").unwrap()[..], &dek[..]);
        // Another context, a flipped byte, a truncated wrap: integrity failures.
        assert!(matches!(p.unwrap(KekId(1), &w, b"partition-b"), Err(VaultError::Integrity)));
        let mut bad = w.clone();
        bad[20] ^= 1;
        assert!(matches!(p.unwrap(KekId(1), &bad, b"partition-a"), Err(VaultError::Integrity)));
        assert!(matches!(p.unwrap(KekId(1), &w[..20], b"partition-a"), Err(VaultError::Integrity)));
        // Two wraps of one key differ (fresh nonces).
        assert_ne!(p.wrap(KekId(1), &dek, b"partition-a").unwrap(), w);

        // The KEK cannot be read out of the token.
        let h = p.handle(KekId(1)).unwrap();
        p.with_session(|s| {
            let attrs = s.get_attributes(h, &[AttributeType::Extractable, AttributeType::Sensitive]).unwrap();
            assert!(attrs.contains(&Attribute::Extractable(false)) && attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
            let value = s.get_attributes(h, &[AttributeType::Value]).map(|v| v.iter().any(|a| matches!(a, Attribute::Value(_)))).unwrap_or(false);
            assert!(!value, "the key's value is not readable");
            Ok(())
        })
        .unwrap();

        // Rotation: a new current KEK; the old one still unwraps; another process sees it.
        assert_eq!(p.rotate().unwrap(), KekId(2));
        assert_eq!(p.current().unwrap(), KekId(2));
        assert_eq!(&p.unwrap(KekId(1), &w, b"partition-a").unwrap()[..], &dek[..]);
        let w2 = p.wrap(KekId(2), &dek, b"partition-a").unwrap();
        assert!(matches!(p.unwrap(KekId(1), &w2, b"partition-a"), Err(VaultError::Integrity)));
        let again = Pkcs11Provider::open(&cfg, false).unwrap();
        assert_eq!(again.kek_ids().unwrap(), vec![KekId(1), KekId(2)]);
        assert_eq!(&again.unwrap(KekId(2), &w2, b"partition-a").unwrap()[..], &dek[..]);
        assert!(matches!(again.unwrap(KekId(9), &w2, b"partition-a"), Err(VaultError::UnknownKek(KekId(9)))));
        // A wrong PIN opens nothing (once this process's sessions are closed: a login
        // belongs to the application, not to one session).
        drop((p, again));
        let wrong = Pkcs11Config { pin: Zeroizing::new("0000".into()), ..cfg };
        assert!(Pkcs11Provider::open(&wrong, false).is_err());
    }

    #[test]
    fn a_vault_runs_on_the_token() {
        let _turn = TOKEN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let Some(cfg) = token(dir.path(), "brankas-vault") else { return };
        let provider: std::sync::Arc<dyn KeyProvider> = std::sync::Arc::new(Pkcs11Provider::open(&cfg, true).unwrap());
        let (vault, root) = crate::Vault::create(provider).unwrap();
        let p = crate::PartitionId([3; 32]);
        let (key, wrapped) = vault.new_data_key(&p).unwrap();
        drop(vault);
        // Reopened from the token alone, with the stored root.
        let provider: std::sync::Arc<dyn KeyProvider> = std::sync::Arc::new(Pkcs11Provider::open(&cfg, false).unwrap());
        let vault = crate::Vault::open(provider, &root).unwrap();
        let opened = vault.open_data_key(&p, &wrapped).unwrap();
        let aad = crate::RecordAad { resource_type: "Observation", record: &crate::RecordKey([1; 32]), version: 1, partition: &p, dek_version: 1 };
        let sealed = key.seal(&aad, b"hasil antigen positif").unwrap();
        assert_eq!(&opened.open(&aad, &sealed).unwrap()[..], b"hasil antigen positif");
    }
}
