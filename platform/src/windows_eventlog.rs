//! The Windows Event Log (an event source of zpxe's own) and the one service control the
//! `windows-service` crate does not send (SERVICE_CONTROL_PARAMCHANGE).
//!
//! A source is a registry key below
//! `HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application`, naming the file that holds
//! its message texts. zpxe's events carry their whole text as the one insertion string, so the
//! message file only needs a `%1` message for each event id: .NET's `EventLogMessages.dll`,
//! present on every Windows with the .NET Framework 4, is that file ([`MESSAGE_FILE`]).

use std::io;

use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_SUCCESS, HANDLE};
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
    RegisterEventSourceW, ReportEventW,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_SET_VALUE, REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
    RegCloseKey, RegCreateKeyExW, RegDeleteTreeW, RegSetValueExW,
};
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, ControlService, OpenSCManagerW, OpenServiceW, SC_HANDLE,
    SC_MANAGER_CONNECT, SERVICE_CONTROL_PARAMCHANGE, SERVICE_PAUSE_CONTINUE, SERVICE_STATUS,
};

/// Where the Application log's sources are registered (below HKLM).
pub const SOURCES_KEY: &str = r"SYSTEM\CurrentControlSet\Services\EventLog\Application";
/// A message file with `%1` for every event id (.NET Framework 4).
pub const MESSAGE_FILE: &str =
    r"%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll";

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn win32(code: u32, what: &str) -> io::Result<()> {
    if code == ERROR_SUCCESS {
        return Ok(());
    }
    let e = io::Error::from_raw_os_error(code as i32);
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Registers `source` in the Application log with [`MESSAGE_FILE`] (elevated; an existing
/// registration is overwritten).
pub fn register_source(source: &str) -> io::Result<()> {
    let path = wide(&format!(r"{SOURCES_KEY}\{source}"));
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: valid strings; `key` receives an open key, closed below.
    let code = unsafe {
        RegCreateKeyExW(
            HKEY_LOCAL_MACHINE,
            path.as_ptr(),
            0,
            std::ptr::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_SET_VALUE,
            std::ptr::null(),
            &mut key,
            std::ptr::null_mut(),
        )
    };
    win32(code, &format!(r"creating HKLM\{SOURCES_KEY}\{source}"))?;
    let file = wide(MESSAGE_FILE);
    let file_bytes: Vec<u8> = file.iter().flat_map(|u| u.to_le_bytes()).collect();
    // Errors, warnings and information.
    let types: u32 = 7;
    let set = |name: &str, kind, data: &[u8]| {
        let name = wide(name);
        // SAFETY: an open key, a valid name and `data.len()` readable bytes.
        let code = unsafe {
            RegSetValueExW(
                key,
                name.as_ptr(),
                0,
                kind,
                data.as_ptr(),
                data.len() as u32,
            )
        };
        win32(code, "setting the event source's values")
    };
    let result = set("EventMessageFile", REG_EXPAND_SZ, &file_bytes)
        .and_then(|()| set("TypesSupported", REG_DWORD, &types.to_le_bytes()));
    // SAFETY: opened above.
    unsafe { RegCloseKey(key) };
    result
}

/// Removes `source`'s registration; a source that is not registered is no error.
pub fn deregister_source(source: &str) -> io::Result<()> {
    let path = wide(&format!(r"{SOURCES_KEY}\{source}"));
    // SAFETY: a valid string.
    let code = unsafe { RegDeleteTreeW(HKEY_LOCAL_MACHINE, path.as_ptr()) };
    if code == ERROR_FILE_NOT_FOUND {
        return Ok(());
    }
    win32(code, &format!(r"removing HKLM\{SOURCES_KEY}\{source}"))
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Information,
    Warning,
    Error,
}

/// An open event source: [`EventSource::report`] writes one event.
#[derive(Debug)]
pub struct EventSource(HANDLE);

// SAFETY: an event log handle may be used from any thread (the API serializes).
unsafe impl Send for EventSource {}
// SAFETY: as above; `report` takes `&self` and the handle is never changed.
unsafe impl Sync for EventSource {}

impl EventSource {
    /// Opens `source` on this computer (unregistered, Windows still logs, with a note that the
    /// description is missing).
    pub fn open(source: &str) -> io::Result<Self> {
        let name = wide(source);
        // SAFETY: a valid name; null server: this computer.
        let h = unsafe { RegisterEventSourceW(std::ptr::null(), name.as_ptr()) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(h))
    }

    /// Writes one event with `text` as its message, under `id`.
    pub fn report(&self, level: Level, id: u32, text: &str) -> io::Result<()> {
        let kind = match level {
            Level::Information => EVENTLOG_INFORMATION_TYPE,
            Level::Warning => EVENTLOG_WARNING_TYPE,
            Level::Error => EVENTLOG_ERROR_TYPE,
        };
        // An event's strings are limited to 31,839 characters.
        let text: String = text.chars().take(31_000).collect();
        let text = wide(&text);
        let strings = [text.as_ptr()];
        // SAFETY: an open source, one valid string, no raw data.
        let ok = unsafe {
            ReportEventW(
                self.0,
                kind,
                0,
                id,
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for EventSource {
    fn drop(&mut self) {
        // SAFETY: opened by `open`, closed once.
        unsafe { DeregisterEventSource(self.0) };
    }
}

/// A service control manager handle, closed on drop.
struct Scm(SC_HANDLE);

impl Drop for Scm {
    fn drop(&mut self) {
        // SAFETY: opened by OpenSCManagerW/OpenServiceW, closed once.
        unsafe { CloseServiceHandle(self.0) };
    }
}

/// Sends SERVICE_CONTROL_PARAMCHANGE to the service `name`, as `sc control NAME paramchange`
/// does: the service re-reads its configuration. Fails when the service is not running or does
/// not accept the control.
pub fn param_change(name: &str) -> io::Result<()> {
    // SAFETY: null machine and database: this computer's active database.
    let manager = unsafe { OpenSCManagerW(std::ptr::null(), std::ptr::null(), SC_MANAGER_CONNECT) };
    if manager.is_null() {
        return Err(io::Error::last_os_error());
    }
    let manager = Scm(manager);
    let wname = wide(name);
    // SAFETY: an open manager and a valid name.
    let service = unsafe { OpenServiceW(manager.0, wname.as_ptr(), SERVICE_PAUSE_CONTINUE) };
    if service.is_null() {
        return Err(io::Error::last_os_error());
    }
    let service = Scm(service);
    // SAFETY: SERVICE_STATUS is plain data.
    let mut status: SERVICE_STATUS = unsafe { std::mem::zeroed() };
    // SAFETY: an open service with the access the control needs; `status` is writable.
    if unsafe { ControlService(service.0, SERVICE_CONTROL_PARAMCHANGE, &mut status) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registering writes the key and its values; removing it twice is fine. (The Wine prefix
    /// the unit tests run in is elevated.)
    #[test]
    fn a_source_registers_reports_and_deregisters() {
        let source = format!("zpxe-test-{}", std::process::id());
        register_source(&source).expect("register");
        let events = EventSource::open(&source).expect("open");
        events
            .report(Level::Information, 1, "zpxe unit test: information")
            .expect("report");
        events
            .report(Level::Error, 4, "zpxe unit test: error")
            .expect("report");
        drop(events);
        deregister_source(&source).expect("deregister");
        deregister_source(&source).expect("deregister again");
    }

    #[test]
    fn param_change_of_a_missing_service_fails() {
        assert!(param_change("zpxe-no-such-service").is_err());
    }
}
