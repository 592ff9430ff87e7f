; The davdrive installer for 64-bit Windows, built on Linux by packaging/windows/build with
; makensis from Debian's nsis package (no third-party plugins).
;
; What it does, per machine (administrator rights):
; - installs davdrive.exe, the README, docs/WINDOWS.md and the GPL into
;   $PROGRAMFILES64\davdrive, writes uninstall.exe and the Add/Remove Programs entry;
; - appends that folder to the system PATH and removes exactly that entry on uninstall;
; - checks for WinFsp, which davdrive needs to mount drives. Without it the installer says
;   where to get it and installs anyway: davdrive loads WinFsp's DLL only when it mounts.
; - writes what it did to $INSTDIR\install.log (UTF-16), which is also where a silent install
;   (/S) leaves the WinFsp warning that the message box would have shown.
;
; A 64-bit installer (Target amd64-unicode): davdrive is x64-only, $PROGRAMFILES64 and the
; 64-bit registry are then the native ones, and it runs under a 64-bit-only Wine, which is how
; packaging/windows/test-installer checks it on Linux.
;
; Defines from the build script: VERSION (Cargo.toml), NUMVER (X.Y.Z.0), SRCDIR (a folder
; holding davdrive.exe, README.md, WINDOWS.md, COPYING.txt), OUTFILE; COMPRESSOR optionally.

Unicode true
Target amd64-unicode
ManifestDPIAware true
RequestExecutionLevel admin
!ifdef COMPRESSOR
  SetCompressor ${COMPRESSOR}    ; NSIS_COMPRESS=zlib packaging/windows/build: faster (CI)
!else
  SetCompressor /SOLID lzma
!endif

!ifndef VERSION | NUMVER | SRCDIR | OUTFILE
  !error "run packaging/windows/build, which defines VERSION, NUMVER, SRCDIR and OUTFILE"
!endif

!include MUI2.nsh
!include LogicLib.nsh
!include FileFunc.nsh
!include WinMessages.nsh

!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\davdrive"
!define ENV_KEY "SYSTEM\CurrentControlSet\Control\Session Manager\Environment"
; WinFsp's MSI is a 32-bit package: its key is under WOW6432Node in the 64-bit view this
; (64-bit) installer reads by default. davdrive itself reads the same value at mount time.
!define WINFSP_KEY "SOFTWARE\WOW6432Node\WinFsp"
!define WINFSP_HINT "davdrive needs WinFsp 2.x to mount drives.$\r$\n$\r$\nGet the WinFsp installer (the .msi file) from https://winfsp.dev/rel/ or run$\r$\n$\r$\n    winget install WinFsp.WinFsp$\r$\n$\r$\ndavdrive is installed anyway and works once WinFsp is installed."

Name "davdrive ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\davdrive"
InstallDirRegKey HKLM "${UNINST_KEY}" "InstallLocation"
BrandingText "davdrive ${VERSION}"
ShowInstDetails show
ShowUninstDetails show

VIProductVersion "${NUMVER}"
VIFileVersion "${NUMVER}"
VIAddVersionKey "ProductName" "davdrive"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "davdrive ${VERSION} setup"
VIAddVersionKey "CompanyName" "davdrive"
VIAddVersionKey "LegalCopyright" "davdrive developers, GPL-3.0-or-later"

; The GPL is shown for information: it needs no acceptance to use the program.
!define MUI_LICENSEPAGE_BUTTON "$(^NextBtn)"
!define MUI_LICENSEPAGE_TEXT_BOTTOM "davdrive is free software under the GNU General Public License, version 3 or later. You do not need to accept it to use davdrive."
!insertmacro MUI_PAGE_LICENSE "${SRCDIR}/COPYING.txt"
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Var LogFile
; PathRemoveEntry's arguments and results (NSIS functions take none of their own).
Var PathList
Var PathDir
Var PathOut
Var PathHit
; Its working variables.
Var PathRest
Var PathEntry
Var PathPos
Var PathLen
Var PathChar
Var PathFirst
; The name the new davdrive.exe is written under (see RenameRunningExe).
Var NewExe

; A line in the details window and in $INSTDIR\install.log.
!macro Log text
  DetailPrint "${text}"
  FileWriteUTF16LE $LogFile "${text}$\r$\n"
!macroend

; PATH editing with NSIS strings, which hold at most ${NSIS_MAX_STRLEN} characters (1024 in
; Debian's build). ReadRegStr fails (rather than truncating) on a longer value, and nothing
; longer is ever written back: a PATH that does not fit is left exactly as it was, and the
; log says so. That is the failure that made older NSIS PATH scripts empty users' PATHs.
;
; PathRemoveEntry: $PathOut = $PathList without the entries naming $PathDir (compared
; ignoring case, with or without a trailing backslash or quotes); $PathHit = 1 if there was
; one. Every other entry, empty ones included, is kept as it was, in order.
!macro PATH_REMOVE_ENTRY un
Function ${un}PathRemoveEntry
  StrCpy $PathOut ""
  StrCpy $PathHit 0
  StrCpy $PathFirst 1
  StrCpy $PathRest $PathList
  ${Do}
    StrLen $PathLen $PathRest
    StrCpy $PathPos 0
    ${DoWhile} $PathPos < $PathLen
      StrCpy $PathChar $PathRest 1 $PathPos
      ${IfThen} $PathChar == ";" ${|} ${ExitDo} ${|}
      IntOp $PathPos $PathPos + 1
    ${Loop}
    StrCpy $PathEntry $PathRest $PathPos
    ${If} $PathEntry == $PathDir
    ${OrIf} $PathEntry == "$PathDir\"
    ${OrIf} $PathEntry == '"$PathDir"'
      StrCpy $PathHit 1
    ${ElseIf} $PathFirst == 1
      StrCpy $PathOut $PathEntry
      StrCpy $PathFirst 0
    ${Else}
      StrCpy $PathOut "$PathOut;$PathEntry"
    ${EndIf}
    ${If} $PathPos >= $PathLen
      ${ExitDo}
    ${EndIf}
    IntOp $PathPos $PathPos + 1
    StrCpy $PathRest $PathRest "" $PathPos
  ${Loop}
FunctionEnd
!macroend
!insertmacro PATH_REMOVE_ENTRY ""
!insertmacro PATH_REMOVE_ENTRY "un."

Function AddToPath
  ClearErrors
  ReadRegStr $PathList HKLM "${ENV_KEY}" "Path"
  ${If} ${Errors}
    !insertmacro Log "PATH not changed: the system Path cannot be read, or it is longer than ${NSIS_MAX_STRLEN} characters. Add $INSTDIR to it by hand (System Properties, Environment Variables) or run davdrive by its full path."
    MessageBox MB_OK|MB_ICONINFORMATION "$INSTDIR was not added to the system PATH: the PATH is too long for this installer to change safely.$\r$\n$\r$\nAdd it by hand (System Properties, Environment Variables), or run davdrive by its full path." /SD IDOK
    Return
  ${EndIf}
  StrCpy $PathDir $INSTDIR
  Call PathRemoveEntry
  ${If} $PathHit == 1
    !insertmacro Log "PATH already holds $INSTDIR"
    Return
  ${EndIf}
  StrLen $0 $PathList
  StrLen $1 $INSTDIR
  IntOp $0 $0 + $1
  IntOp $0 $0 + 1
  ${If} $0 >= ${NSIS_MAX_STRLEN}
    !insertmacro Log "PATH not changed: it would be longer than this installer can write safely (${NSIS_MAX_STRLEN} characters). Add $INSTDIR to it by hand (System Properties, Environment Variables) or run davdrive by its full path."
    MessageBox MB_OK|MB_ICONINFORMATION "$INSTDIR was not added to the system PATH: the PATH is too long for this installer to change safely.$\r$\n$\r$\nAdd it by hand (System Properties, Environment Variables), or run davdrive by its full path." /SD IDOK
    Return
  ${EndIf}
  ${If} $PathList == ""
    StrCpy $PathList $INSTDIR
  ${Else}
    StrCpy $0 $PathList 1 -1
    ${If} $0 == ";"
      StrCpy $PathList "$PathList$INSTDIR"
    ${Else}
      StrCpy $PathList "$PathList;$INSTDIR"
    ${EndIf}
  ${EndIf}
  ; REG_EXPAND_SZ, as Windows keeps it: its entries use %SystemRoot%.
  WriteRegExpandStr HKLM "${ENV_KEY}" "Path" $PathList
  SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=5000
  !insertmacro Log "PATH: added $INSTDIR (new terminals see it)"
FunctionEnd

Function un.RemoveFromPath
  ClearErrors
  ReadRegStr $PathList HKLM "${ENV_KEY}" "Path"
  ${If} ${Errors}
    DetailPrint "PATH not changed: it cannot be read or is too long for this uninstaller; remove $INSTDIR from it by hand"
    Return
  ${EndIf}
  StrCpy $PathDir $INSTDIR
  Call un.PathRemoveEntry
  ${If} $PathHit == 1
    WriteRegExpandStr HKLM "${ENV_KEY}" "Path" $PathOut
    SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=5000
    DetailPrint "PATH: removed $INSTDIR"
  ${EndIf}
FunctionEnd

; WinFsp is found the way davdrive finds it: InstallDir from its registry key, then
; bin\winfsp-x64.dll under it. Never fatal.
Function CheckWinFsp
  ClearErrors
  ReadRegStr $0 HKLM "${WINFSP_KEY}" "InstallDir"
  ${If} ${Errors}
  ${OrIf} $0 == ""
    !insertmacro Log "WinFsp not found (no InstallDir under HKLM\${WINFSP_KEY}): davdrive cannot mount drives until WinFsp 2.x is installed: https://winfsp.dev/rel/ or winget install WinFsp.WinFsp"
    MessageBox MB_OK|MB_ICONEXCLAMATION "${WINFSP_HINT}" /SD IDOK
    Return
  ${EndIf}
  ; InstallDir ends with a backslash.
  StrCpy $1 $0 1 -1
  ${If} $1 == "\"
    StrCpy $0 $0 -1
  ${EndIf}
  ${IfNot} ${FileExists} "$0\bin\winfsp-x64.dll"
    !insertmacro Log "WinFsp not found: its registry key names $0, which has no bin\winfsp-x64.dll (a damaged install?). Reinstall WinFsp 2.x: https://winfsp.dev/rel/ or winget install WinFsp.WinFsp"
    MessageBox MB_OK|MB_ICONEXCLAMATION "WinFsp's installation in $0 looks incomplete (bin\winfsp-x64.dll is missing).$\r$\n$\r$\n${WINFSP_HINT}" /SD IDOK
    Return
  ${EndIf}
  ClearErrors
  GetDLLVersion "$0\bin\winfsp-x64.dll" $1 $2
  ${If} ${Errors}
    !insertmacro Log "WinFsp found in $0 (version unknown)"
    Return
  ${EndIf}
  IntOp $3 $1 >> 16
  IntOp $3 $3 & 0xFFFF
  IntOp $4 $1 & 0xFFFF
  IntOp $5 $2 >> 16
  IntOp $5 $5 & 0xFFFF
  ${If} $3 < 2
    !insertmacro Log "WinFsp $3.$4.$5 found in $0, older than 2.0: update it: https://winfsp.dev/rel/ or winget upgrade WinFsp.WinFsp"
    MessageBox MB_OK|MB_ICONEXCLAMATION "WinFsp $3.$4.$5 is installed; davdrive is built for WinFsp 2.x. Uninstall WinFsp 1.x, then install 2.x.$\r$\n$\r$\n${WINFSP_HINT}" /SD IDOK
  ${Else}
    !insertmacro Log "WinFsp $3.$4.$5 found in $0"
  ${EndIf}
FunctionEnd

; Each upgrade made while davdrive.exe runs (a mounted drive) renames it, and a second one
; before that copy has stopped cannot reuse its name: the old copies are davdrive.exe.old,
; then davdrive.exe.old.1 to .old.${OLD_COPIES}.
!define OLD_COPIES 9

; Deletes the old copies that no longer run, and a davdrive.exe.new (see RenameRunningExe)
; that a restart has not yet put in place: it is older than what this install brings. Those
; still running cannot be deleted, and stay.
Function DeleteOldCopies
  Delete "$INSTDIR\davdrive.exe.new"
  Delete "$INSTDIR\davdrive.exe.old"
  ${For} $0 1 ${OLD_COPIES}
    Delete "$INSTDIR\davdrive.exe.old.$0"
  ${Next}
  ClearErrors
FunctionEnd

; davdrive.exe runs: it goes on under the first free name of davdrive.exe.old, .old.1 ...
; .old.${OLD_COPIES}. If none is free (ten old versions still running), the new one is written
; as davdrive.exe.new ($NewExe) and replaces davdrive.exe at the next restart. Never fatal:
; a silent install must not abort because an old mount is still up.
Function RenameRunningExe
  StrCpy $1 "davdrive.exe.old"
  ${For} $0 0 ${OLD_COPIES}
    ${If} $0 > 0
      StrCpy $1 "davdrive.exe.old.$0"
    ${EndIf}
    ${IfNot} ${FileExists} "$INSTDIR\$1"
      ClearErrors
      Rename "$INSTDIR\davdrive.exe" "$INSTDIR\$1"
      ${IfNot} ${Errors}
        !insertmacro Log "davdrive.exe is running (a mounted drive); it goes on as $1 until unmounted"
        Return
      ${EndIf}
    ${EndIf}
  ${Next}
  ClearErrors
  StrCpy $NewExe "davdrive.exe.new"
  !insertmacro Log "davdrive.exe is running and cannot be renamed (davdrive.exe.old to .old.${OLD_COPIES} are all taken by copies still running): the new one is installed as davdrive.exe.new and replaces it at the next restart"
FunctionEnd

Section "davdrive" SecMain
  SectionIn RO
  SetShellVarContext all
  SetOutPath "$INSTDIR"
  FileOpen $LogFile "$INSTDIR\install.log" w
  FileWriteWord $LogFile 0xFEFF
  !insertmacro Log "davdrive ${VERSION}: installing into $INSTDIR"

  ; A mounted drive keeps davdrive.exe open, and Windows refuses to replace a running
  ; program but lets it be renamed: its mounts go on with the old copy, new ones start the
  ; new one. The old copies that no longer run go at the next install or uninstall.
  Call DeleteOldCopies
  StrCpy $NewExe "davdrive.exe"
  ${If} ${FileExists} "$INSTDIR\davdrive.exe"
    ClearErrors
    Delete "$INSTDIR\davdrive.exe"
    ${If} ${Errors}
      Call RenameRunningExe
    ${EndIf}
  ${EndIf}

  File "/oname=$INSTDIR\$NewExe" "${SRCDIR}/davdrive.exe"
  ${If} $NewExe != "davdrive.exe"
    Rename /REBOOTOK "$INSTDIR\$NewExe" "$INSTDIR\davdrive.exe"
  ${EndIf}
  File "${SRCDIR}/README.md"
  File "${SRCDIR}/WINDOWS.md"
  File "${SRCDIR}/COPYING.txt"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  Call AddToPath
  Call CheckWinFsp

  WriteRegStr HKLM "${UNINST_KEY}" "DisplayName" "davdrive"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINST_KEY}" "Publisher" "davdrive"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\davdrive.exe"
  WriteRegStr HKLM "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoRepair" 1
  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  IntFmt $0 "0x%08X" $0
  WriteRegDWORD HKLM "${UNINST_KEY}" "EstimatedSize" "$0"

  !insertmacro Log "done"
  FileClose $LogFile
SectionEnd

Section "Uninstall"
  SetShellVarContext all
  ; Users' data stays: each user's caches, upload journals and recovery folders are under
  ; their own %LOCALAPPDATA%\davdrive, and a recovery folder may hold the only copy of a
  ; file whose upload failed (`davdrive status` lists them). Profiles and pinned
  ; certificates stay too.
  ;
  ; Logon tasks made by `davdrive autostart enable PROFILE` stay as well: they are per user,
  ; and this uninstaller runs as one (elevated) user who cannot see the others' tasks.
  ; `davdrive autostart disable PROFILE`, run by each user before uninstalling, removes
  ; them; a task left behind fails at logon without doing anything.
  ClearErrors
  Delete "$INSTDIR\davdrive.exe"
  ${If} ${Errors}
    Delete /REBOOTOK "$INSTDIR\davdrive.exe"
    DetailPrint "davdrive.exe is running (a drive still mounted?): it is removed at the next restart"
  ${EndIf}
  ; Old copies still running (see DeleteOldCopies) go at the next restart too.
  ${If} ${FileExists} "$INSTDIR\davdrive.exe.old"
    Delete /REBOOTOK "$INSTDIR\davdrive.exe.old"
  ${EndIf}
  ${For} $0 1 ${OLD_COPIES}
    ${If} ${FileExists} "$INSTDIR\davdrive.exe.old.$0"
      Delete /REBOOTOK "$INSTDIR\davdrive.exe.old.$0"
    ${EndIf}
  ${Next}
  ${If} ${FileExists} "$INSTDIR\davdrive.exe.new"
    Delete /REBOOTOK "$INSTDIR\davdrive.exe.new"
  ${EndIf}
  Delete "$INSTDIR\README.md"
  Delete "$INSTDIR\WINDOWS.md"
  Delete "$INSTDIR\COPYING.txt"
  Delete "$INSTDIR\install.log"
  Delete "$INSTDIR\uninstall.exe"
  ; Only if empty: nothing is removed that this installer did not put there.
  RMDir "$INSTDIR"

  Call un.RemoveFromPath
  DeleteRegKey HKLM "${UNINST_KEY}"
SectionEnd
